{
  "targets": [
    {
      "target_name": "vdisk_native",
      "sources": ["vdisk_native.c", "vdisk_deflate.c", "vdisk_zstd.c", "vdisk_sendfile.c"],
      "libraries": ["-ldl", "-lpthread"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
