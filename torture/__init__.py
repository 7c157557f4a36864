"""`make torture`: SIGKILLs under mixed load, a full disk, fuzzing and idle clients against real processes."""
