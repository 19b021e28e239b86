"""Crash-safe run store: append-only journal plus atomically rebuilt HDF5 run records."""
from .hdf5 import FORMAT, SCHEMA_VERSION, RunRecord, summarize, write_hdf5
from .journal import (JournalScan, Record, RecordType, RunContent, journal_path, read_journal,
                      replay)
from .writer import RunWriter, read_content, recover

__all__ = [
    "FORMAT", "SCHEMA_VERSION", "JournalScan", "Record", "RecordType", "RunContent",
    "RunRecord", "RunWriter", "journal_path", "read_journal", "recover", "replay",
    "summarize", "write_hdf5",
]
