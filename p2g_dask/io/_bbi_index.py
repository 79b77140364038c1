"""The two indexes of a bbi file (BigWig, BigBed), as bytes built from arrays.

The UCSC bbi format finds a chromosome by name in a B+ tree (kent's ``bPlusTree.c``) and the
compressed blocks overlapping a region in an R-tree (kent's ``cirTree.c``). Both are written here
level by level from the root down, each node's file offset computed before any byte is written,
so :mod:`p2g_dask.io._bigwig_writer` can place them anywhere in the file. All integers
little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

BPT_MAGIC = 0x78CA8C91
CIRTREE_MAGIC = 0x2468ACE0
# Children of a node in both trees (UCSC's default blockSize).
BLOCK_SIZE = 256

_LEAF = np.dtype([("chrom_lo", "<u4"), ("start", "<u4"), ("chrom_hi", "<u4"), ("end", "<u4"),
                  ("offset", "<u8"), ("size", "<u8")])
_NODE = np.dtype([("chrom_lo", "<u4"), ("start", "<u4"), ("chrom_hi", "<u4"), ("end", "<u4"),
                  ("offset", "<u8")])


def chrom_tree_bytes(names: list[bytes], sizes: list[int], base: int) -> bytes:
    """B+ tree of the (sorted) chromosome names -> (id, size), placed at file offset ``base``.

    Examples
    --------
    >>> tree = chrom_tree_bytes([b"chr1", b"chr2"], [1000, 500], base=0)
    >>> len(tree), tree[36:40]  # header (32 bytes), one leaf node: 4 + 2 x (4 + 8) bytes
    (60, b'chr1')
    """
    key_size = max(len(n) for n in names)
    block = max(1, min(BLOCK_SIZE, len(names)))
    item_size = key_size + 8  # leaf: key + id + size; inner: key + child offset
    # Levels from the root down; an inner level lists the first item of each node below it.
    levels = [list(range(len(names)))]
    while len(levels[0]) > block:
        levels.insert(0, levels[0][::block])
    node_offsets = []
    offset = base + 32
    for entries in levels:
        node_offsets.append([])
        for j in range(0, len(entries), block):
            node_offsets[-1].append(offset)
            offset += 4 + item_size * min(block, len(entries) - j)
    out = [struct.pack("<IIIIQQ", BPT_MAGIC, block, key_size, 8, len(names), 0)]
    for depth, entries in enumerate(levels):
        leaf = depth == len(levels) - 1
        for j in range(0, len(entries), block):
            node = entries[j:j + block]
            out.append(struct.pack("<BBH", 1 if leaf else 0, 0, len(node)))
            for k, item in enumerate(node):
                out.append(names[item].ljust(key_size, b"\0"))
                out.append(struct.pack("<II", item, sizes[item]) if leaf
                           else struct.pack("<Q", node_offsets[depth + 1][(j + k)]))
    return b"".join(out)


def rtree_bytes(chrom: Sequence[int], start: Sequence[int], end: Sequence[int], offsets: Sequence[int],
                sizes: Sequence[int], *, base: int, end_of_data: int, items_per_slot: int) -> bytes:
    """The R-tree (cirTree) over data blocks, placed at file offset ``base``.

    Block ``i`` covers ``[start[i], end[i])`` of chromosome id ``chrom[i]`` (blocks in file
    order, sorted by position) and takes ``sizes[i]`` bytes at file offset ``offsets[i]``;
    ``end_of_data`` and ``items_per_slot`` (items per block) go into the tree's header.

    Examples
    --------
    >>> tree = rtree_bytes([0, 0], [0, 100], [100, 250], [1000, 1040], [40, 30], base=2000, end_of_data=2000,
    ...                    items_per_slot=1024)
    >>> len(tree), struct.unpack("<IIQ", tree[:16])[2]  # header (48 bytes), one leaf node: 4 + 2 x 32 bytes
    (116, 2)
    """
    n = len(chrom)
    leaf = np.zeros(n, _LEAF)
    leaf["chrom_lo"] = leaf["chrom_hi"] = chrom
    leaf["start"] = start
    leaf["end"] = end
    leaf["offset"] = offsets
    leaf["size"] = sizes
    levels = [leaf]
    while len(levels[-1]) > BLOCK_SIZE:
        below = levels[-1]
        first = np.arange(0, below.size, BLOCK_SIZE)
        node = np.zeros(first.size, _NODE)
        node["chrom_lo"] = below["chrom_lo"][first]
        node["start"] = below["start"][first]
        hi_key = (below["chrom_hi"].astype(np.uint64) << np.uint64(32)) | below["end"].astype(np.uint64)
        top = np.maximum.reduceat(hi_key, first)
        node["chrom_hi"] = (top >> np.uint64(32)).astype(np.uint32)
        node["end"] = (top & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        levels.append(node)
    levels.reverse()
    # Byte offset of every node, root first; a node is a 4-byte header plus its entries.
    node_starts = []
    offset = base + 48
    for entries in levels:
        starts = []
        for j in range(0, entries.size, BLOCK_SIZE):
            starts.append(offset)
            offset += 4 + entries.itemsize * min(BLOCK_SIZE, entries.size - j)
        node_starts.append(starts)
    hi_chrom, hi_end = (int(leaf["chrom_hi"][-1]), int(leaf["end"][-1])) if n else (0, 0)
    parts = [struct.pack("<IIQIIIIQII", CIRTREE_MAGIC, BLOCK_SIZE, n,
                         int(leaf["chrom_lo"][0]) if n else 0, int(leaf["start"][0]) if n else 0,
                         hi_chrom, hi_end, end_of_data, items_per_slot, 0)]
    for depth, entries in enumerate(levels):
        is_leaf = depth == len(levels) - 1
        if not is_leaf:
            entries = entries.copy()
            entries["offset"] = np.asarray(node_starts[depth + 1], np.uint64)
        for j in range(0, max(entries.size, 1), BLOCK_SIZE):
            chunk = entries[j:j + BLOCK_SIZE]
            parts.append(struct.pack("<BBH", 1 if is_leaf else 0, 0, chunk.size) + chunk.tobytes())
    return b"".join(parts)
