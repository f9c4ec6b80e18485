"""Runtime: the kernel cache on disk, and the executables each backend builds from a Program."""
