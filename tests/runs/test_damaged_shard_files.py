"""A shard file damaged after it was written (a bad copy, a failing disk) is one clear error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ctc_plugin.resumable import RunStore


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_a_damaged_shard_file_is_one_error_naming_the_file_to_delete(tmp_path, suffix):
    out = tmp_path / "run"
    store = RunStore(out)
    store.open({"job": "explain-dataset", "config": {"seed": 1}})
    for index in range(2):
        store.write_shard(f"shard-{index:05d}", pa.table({"i": [index]}), {"i": np.ones(3)})
    damaged = store.shards / f"shard-00001{suffix}"
    damaged.write_bytes(damaged.read_bytes()[:20])  # truncated by a bad copy, say
    read = store.read_table if suffix == ".parquet" else lambda: store.read_arrays("shard-00001")
    with pytest.raises(ValueError, match="cannot read the shard shard-00001") as error:
        read()
    assert f"delete {store.table_path('shard-00001')} to compute it again" in str(error.value)
