{
  "targets": [
    {
      "target_name": "vdisk_native",
      "sources": ["vdisk_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
