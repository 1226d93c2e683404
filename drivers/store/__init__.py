"""State shared by the processes on one home: records, mount holds, locks, atomic files."""
