{
  "targets": [
    {
      "target_name": "vdisk_native",
      "sources": ["vdisk_native.c", "vdisk_deflate.c", "vdisk_zstd.c", "vdisk_sendfile.c", "vdisk_copy.c", "vdisk_scan.c", "vdisk_lane.c", "vdisk_oom.cc"],
      "libraries": ["-ldl", "-lpthread"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "cflags_cc": ["-O2", "-Wall", "-Wextra", "-std=c++17"]
    }
  ]
}
