"""The embeddings table: float16/float32 round trips, keys (image_id, model_id), order, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_catalog.catalog import Catalog
from data_catalog.embeddings import (
    EMBEDDINGS_SCHEMA,
    TABLE,
    embedded_ids,
    model_counts,
    read_embeddings,
    write_embeddings,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_float16_round_trip_keeps_unit_vectors_and_cosines(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 384)).astype(np.float32) * 3.0  # not normalised: the writer does it
    ids = [f"{i:064x}" for i in range(200)]
    assert write_embeddings(catalog, "m/a@1", ids, x, "run-1") == 200
    got_ids, got = read_embeddings(catalog, "m/a@1")
    assert got_ids.tolist() == sorted(ids) and got.dtype == np.float32 and got.shape == (200, 384)
    ref = unit(x)
    # float16: each component within half an ulp (relative 2**-11) of the float32 unit vector
    assert np.all(np.abs(got - ref) <= np.abs(ref) * 2.0**-11 + 2.0**-24)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    cos_err = np.abs(got @ got.T - ref @ ref.T).max()
    assert cos_err < 1e-3
    stored = catalog.read(TABLE, EMBEDDINGS_SCHEMA).to_pylist()[0]
    assert (stored["dtype"], stored["dim"], len(stored["vector"])) == ("float16", 384, 768)


def test_float32_keeps_full_precision_and_ids_come_back_in_the_order_asked(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    x = unit(np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32))
    write_embeddings(catalog, "m", ["e", "d", "c", "b", "a"], x, "r", dtype="float32")
    ids, got = read_embeddings(catalog, "m", ["a", "e", "a"])
    assert ids.tolist() == ["a", "e", "a"]
    np.testing.assert_allclose(got, x[[4, 0, 4]], rtol=1e-6, atol=1e-7)  # renormalised: 1 ulp


def test_existing_keys_are_kept_and_models_never_mix(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    rng = np.random.default_rng(2)
    first, second, other = (rng.standard_normal((3, 4)) for _ in range(3))
    assert write_embeddings(catalog, "m1", ["a", "b", "c"], first, "r1", dtype="float32") == 3
    # b and c exist for m1: only d is new; the stored b, c are not replaced
    assert write_embeddings(catalog, "m1", ["b", "c", "d"], second, "r2", dtype="float32") == 1
    assert write_embeddings(catalog, "m2", ["a"], other[:1, :2], "r2", dtype="float32") == 1
    ids, got = read_embeddings(catalog, "m1")
    assert ids.tolist() == ["a", "b", "c", "d"]
    np.testing.assert_allclose(got[:3], unit(first.astype(np.float32)), rtol=1e-6)
    np.testing.assert_allclose(got[3], unit(second.astype(np.float32))[2], rtol=1e-6)
    assert embedded_ids(catalog, "m2") == {"a"} and embedded_ids(catalog, "m3") == set()
    assert read_embeddings(catalog, "m2")[1].shape == (1, 2)
    assert model_counts(catalog) == {"m1": 4, "m2": 1}


def test_mixed_storage_dtypes_of_one_model_read_together(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    x = unit(np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32))
    write_embeddings(catalog, "m", ["a", "b"], x[:2], "r", dtype="float32")
    write_embeddings(catalog, "m", ["c", "d"], x[2:], "r", dtype="float16")
    _, got = read_embeddings(catalog, "m", ["d", "a", "c", "b"])
    np.testing.assert_allclose(got[[1, 3]], x[[0, 1]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[[2, 0]], x[[2, 3]], atol=1e-3)


def test_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    with pytest.raises(ValueError, match="dtype 'bfloat16' is not one of"):
        write_embeddings(catalog, "m", ["a"], np.ones((1, 2)), "r", dtype="bfloat16")
    with pytest.raises(ValueError, match="1 vector\\(s\\) are non-finite or zero \\(first at row 1\\)"):
        write_embeddings(catalog, "m", ["a", "b"], np.array([[1.0, 0.0], [0.0, 0.0]]), "r")
    with pytest.raises(ValueError, match="non-finite"):
        write_embeddings(catalog, "m", ["a"], np.array([[np.nan, 1.0]]), "r")
    with pytest.raises(ValueError, match="2 image ids for 1 vectors"):
        write_embeddings(catalog, "m", ["a", "b"], np.ones((1, 2)), "r")
    with pytest.raises(ValueError, match="appears twice"):
        write_embeddings(catalog, "m", ["a", "a"], np.ones((2, 2)), "r")
    with pytest.raises(ValueError, match="must be \\[N, D\\]"):
        write_embeddings(catalog, "m", ["a"], np.ones(3), "r")
    assert write_embeddings(catalog, "m", [], np.zeros((0, 2)), "r") == 0
    assert not catalog.exists(TABLE)
    write_embeddings(catalog, "m", ["a"], np.ones((1, 2)), "r")
    with pytest.raises(KeyError) as info:
        read_embeddings(catalog, "m", ["a", "zz", "yy"])
    msg = str(info.value)
    assert "2 of 3 image ids have no 'm' embedding" in msg and "first: zz" in msg and "\n" not in msg
    ids, vectors = read_embeddings(catalog, "unknown")
    assert ids.shape == (0,) and vectors.shape[0] == 0


def test_export_decodes_vectors_to_float_lists(tmp_path: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from data_catalog.export import export_table

    catalog = Catalog(str(tmp_path / "cat"))
    x = unit(np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32))
    write_embeddings(catalog, "m1", ["b", "a", "c"], x, "r", dtype="float32")
    write_embeddings(catalog, "m2", ["a"], np.ones((1, 2)), "r")
    assert export_table(catalog, "embeddings", tmp_path / "e.parquet") == 4
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column("model_id").to_pylist() == ["m1", "m1", "m1", "m2"]
    assert table.column("image_id").to_pylist() == ["a", "b", "c", "a"]
    vectors = table.column("vector").to_pylist()
    np.testing.assert_allclose(vectors[0], x[1], rtol=1e-6)
    np.testing.assert_allclose(vectors[3], [2**-0.5, 2**-0.5], rtol=1e-3)
    assert export_table(catalog, "embeddings", tmp_path / "e.csv") == 4
    csv = pacsv.read_csv(tmp_path / "e.csv")
    assert csv.column("vector").to_pylist()[3].startswith("[0.707")
