"""The on-disk format that the segment stage writes and every later stage reads.

`<segments_dir>/` holds
- `tokens.bin`: the token ids of every kept file, concatenated (no control tokens, no eos), raw
  little-endian integers of `meta.json`'s `dtype`, read through a memory map;
- `files.parquet`: one row per kept file: file_id, source, path, language, sha256, n_bytes,
  token_offset, n_tokens;
- `meta.json`: tokenizer name, segment_len, stride, dtype, control token ids, eos and pad ids;
- `tokenizer/`: the tokenizer with its added tokens, so later stages use exactly these ids.

Windows (autocoder.format's rule: window k of a file starts at token k * stride, plus one last window
that ends at the file's end) are never materialised: a window costs 0 bytes on disk (the seed stored
each one: 25x the corpus at stride 10).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from autocoder.format import window, window_counts, window_start

TOKENS_FILE = "tokens.bin"
FILES_FILE = "files.parquet"
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLIT_FILE = "split.parquet"  # in the split stage's folder: file_id, split


@dataclass(frozen=True)
class Meta:
    tokenizer: str
    segment_len: int
    stride: int
    dtype: str
    control_token_ids: dict[str, int]  # language -> id
    eos_id: int
    pad_id: int
    vocab_size: int  # len(tokenizer), added tokens included

    @classmethod
    def read(cls, segments_dir: Path) -> Meta:
        return cls(**json.loads((Path(segments_dir) / META_FILE).read_text()))

    def write(self, segments_dir: Path) -> None:
        (Path(segments_dir) / META_FILE).write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")


class Corpus:
    """Read-only view of a segment stage output: files, their tokens, their windows."""

    def __init__(self, segments_dir: str | Path):
        self.dir = Path(segments_dir)
        if not (self.dir / META_FILE).exists():
            raise FileNotFoundError(f"{self.dir}: no {META_FILE}; run the segment stage first")
        self.meta = Meta.read(self.dir)
        self.files = read_columns(self.dir / FILES_FILE)

    @cached_property
    def tokens(self) -> np.ndarray:
        path = self.dir / TOKENS_FILE
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=self.meta.dtype)
        return np.memmap(path, dtype=np.dtype(self.meta.dtype).newbyteorder("<"), mode="r")

    def __len__(self) -> int:
        return len(self.files["file_id"])

    def file_tokens(self, row: int) -> np.ndarray:
        off = int(self.files["token_offset"][row])
        return self.tokens[off : off + int(self.files["n_tokens"][row])]

    def windows(self, rows: np.ndarray, segment_len: int | None = None, stride: int | None = None) -> Windows:
        """The windows of the files at `rows` (row positions in files.parquet, not file ids)."""
        return Windows(
            self, np.asarray(rows, dtype=np.int64), segment_len or self.meta.segment_len, stride or self.meta.stride
        )


def read_split(split_dir: str | Path) -> dict[int, str]:
    columns = read_columns(Path(split_dir) / SPLIT_FILE)
    return dict(zip(columns["file_id"].tolist(), columns["split"].tolist()))


# The data stages read and write their small tables through these two, not pq.read_table/pa.table:
# those import pandas (0.7 s, a tenth of the segment and split stages) to check their input's type.


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A parquet file of int64 and string columns (no nulls) as numpy arrays, strings as objects."""
    table = pq.ParquetFile(path).read()
    columns = {}
    for name, chunks in zip(table.column_names, table.columns):
        column = chunks.combine_chunks()
        if pa.types.is_string(column.type):
            columns[name] = np.array(column.to_pylist(), dtype=object)
        else:  # the values buffer, as to_numpy() would give it without its pandas import
            columns[name] = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset :][: len(column)]
    return columns


def write_columns(path: Path, columns: dict[str, list | np.ndarray], strings: tuple[str, ...] = ()) -> None:
    """Write integer columns, and the string columns named in `strings`, as a parquet file."""
    arrays = []
    for name, values in columns.items():
        if name in strings:
            data = [value.encode() for value in values]
            offsets = np.zeros(len(data) + 1, dtype=np.int32)
            np.cumsum([len(d) for d in data], out=offsets[1:])
            buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
            arrays.append(pa.Array.from_buffers(pa.string(), len(data), buffers))
        else:
            ints = np.ascontiguousarray(values, dtype=np.int64)
            arrays.append(pa.Array.from_buffers(pa.int64(), len(ints), [None, pa.py_buffer(ints)]))
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), path)


def split_rows(corpus: Corpus, split_dir: str | Path, split: str) -> np.ndarray:
    """Row positions of corpus files assigned to `split` ('train', 'dev' or 'test')."""
    assignment = read_split(split_dir)
    ids = corpus.files["file_id"]
    return np.array([i for i, fid in enumerate(ids) if assignment.get(int(fid)) == split], dtype=np.int64)


class Windows:
    """Index of windows over a set of files, in O(files) memory: window i is found by binary search
    on the cumulative window counts, so a corpus of millions of windows needs no per-window array."""

    def __init__(self, corpus: Corpus, rows: np.ndarray, segment_len: int, stride: int):
        self.corpus, self.rows, self.segment_len, self.stride = corpus, rows, segment_len, stride
        counts = window_counts(corpus.files["n_tokens"][rows], segment_len, stride)
        self.cum = np.concatenate([[0], np.cumsum(counts)])
        self.control_ids = np.array(
            [corpus.meta.control_token_ids[lang] for lang in corpus.files["language"][rows]], dtype=np.int64
        )

    def __len__(self) -> int:
        return int(self.cum[-1])

    def locate(self, i: int) -> tuple[int, int, int]:
        """(index into rows, start token within the file, length) of window i."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = int(np.searchsorted(self.cum, i, side="right") - 1)
        n = int(self.corpus.files["n_tokens"][self.rows[j]])
        start = int(window_start(n, i - int(self.cum[j]), self.segment_len, self.stride))
        return j, start, min(self.segment_len, n - start)

    def __getitem__(self, i: int) -> np.ndarray:
        """Window i as model input (format.window: control token, the segment, eos at the file's end)."""
        j, start, _ = self.locate(i)
        tokens = self.corpus.file_tokens(int(self.rows[j]))
        return window(tokens, start, self.segment_len, int(self.control_ids[j]), self.corpus.meta.eos_id)

    def language(self, i: int) -> str:
        j, _, _ = self.locate(i)
        return str(self.corpus.files["language"][self.rows[j]])


class CorpusWriter:
    """Streams kept files into `<out_dir>/tokens.bin` and `files.parquet`, in call order.

    Memory stays flat: tokens go straight to disk; only one small row per file is held.
    """

    def __init__(self, out_dir: str | Path, dtype: str):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._tokens = open(self.dir / TOKENS_FILE, "wb")
        self._offset = 0
        self.rows: dict[str, list] = {
            k: [] for k in ("file_id", "source", "path", "language", "sha256", "n_bytes", "token_offset", "n_tokens")
        }

    def add(self, source: str, path: str, language: str, sha256: str, n_bytes: int, ids) -> int:
        ids = np.asarray(ids, dtype=self.dtype)
        file_id = len(self.rows["file_id"])
        self._tokens.write(ids.tobytes())
        for key, value in zip(self.rows, (file_id, source, path, language, sha256, n_bytes, self._offset, len(ids))):
            self.rows[key].append(value)
        self._offset += len(ids)
        return file_id

    def close(self, meta: Meta) -> None:
        self._tokens.close()
        write_columns(self.dir / FILES_FILE, self.rows, strings=("source", "path", "language", "sha256"))
        meta.write(self.dir)
