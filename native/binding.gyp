{
  "targets": [
    {
      "target_name": "vdisk_native",
      "sources": ["vdisk_native.c", "vdisk_deflate.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
