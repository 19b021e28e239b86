"""Crash-safe run store: append-only journal plus atomically rebuilt HDF5 run records."""
from hil.runstore.hdf5 import FORMAT, SCHEMA_VERSION, RunRecord, summarize, write_hdf5
from hil.runstore.journal import (JournalScan, Record, RecordType, RunContent, journal_path, read_journal,
                      replay)
from hil.runstore.writer import RunWriter, read_content, recover

__all__ = [
    "FORMAT", "SCHEMA_VERSION", "JournalScan", "Record", "RecordType", "RunContent",
    "RunRecord", "RunWriter", "journal_path", "read_journal", "recover", "replay",
    "summarize", "write_hdf5",
]
