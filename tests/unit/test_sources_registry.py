"""The source registry, and the listing-based label counts agreeing with discovery."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxrflow.config import CohenFilter, IngestParams, SynthParams
from cxrflow.data.sources import (
    UNKNOWN_LABEL,
    Source,
    count_records,
    get_source,
    register_source,
    registered_sources,
    unregister_source,
)
from cxrflow.data.sources.cohen import CohenSource
from cxrflow.data.sources.kermany import KermanySource
from cxrflow.data.synthetic import generate_phantom
from cxrflow.data.unionfind import UnionFind
from cxrflow.data.versions import list_versions, resolve


def test_builtins_are_registered_in_order() -> None:
    assert [s.name for s in registered_sources()][:2] == ["kermany", "cohen"]
    assert isinstance(get_source("kermany"), KermanySource)
    assert (get_source("kermany").population, get_source("cohen").population) == (
        "pediatric",
        "adult",
    )


def test_registry_rejects_bad_and_duplicate_sources() -> None:
    with pytest.raises(ValueError, match=r"data\.sources\.nih: unknown source 'nih'"):
        get_source("nih")
    with pytest.raises(ValueError, match="already registered"):
        register_source(CohenSource())  # another object under a taken name
    with pytest.raises(ValueError, match="must match"):
        register_source(_named("Bad-Name"))
    with pytest.raises(ValueError, match="population"):
        register_source(_named("elderly", population="geriatric"))
    src = register_source(_named("extra"))
    try:
        assert get_source("extra") is src and registered_sources()[-1] is src
    finally:
        assert unregister_source("extra") is src
    with pytest.raises(ValueError, match="unknown source 'extra'"):
        get_source("extra")


def _named(name: str, population: str = "adult") -> Source:
    class _Src(KermanySource):
        pass

    _Src.name = name  # type: ignore[misc]
    _Src.population = population  # type: ignore[misc]
    return _Src()


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A phantom (Cohen trap rows included) plus undecidable Kermany files and broken rows."""
    out = tmp_path_factory.mktemp("phantom")
    generate_phantom(out, SynthParams(patients_per_class=4, min_side=64, max_side=80, seed=3))
    kermany, cohen = out / "kermany", out / "cohen"
    first = next((kermany / "chest_xray" / "train" / "NORMAL").iterdir())
    for rel in ("train/PNEUMONIA/person9_1.jpeg", "train/COVID/x.jpeg", "test/stray.jpeg"):
        (kermany / "chest_xray" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first, kermany / "chest_xray" / rel)
    (kermany / "chest_xray" / "__MACOSX").mkdir()
    shutil.copyfile(first, kermany / "chest_xray" / "__MACOSX" / "junk.jpeg")
    with open(cohen / "metadata.csv", "a", encoding="utf-8") as fh:
        n = len((cohen / "metadata.csv").read_text().splitlines()[0].split(","))
        for folder, name in (("images", "gone.jpg"), ("..", "escape.jpg")):
            cells = [""] * n
            cells[0], cells[4], cells[17], cells[18] = "999", "covid-19", " PA ", "X-ray"
            cells[21], cells[22] = folder, name
            fh.write(",".join(cells) + "\n")
    return kermany, cohen


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("flt", [CohenFilter(), CohenFilter(views=("PA", "L"))], ids=["paper", "L"])
@pytest.mark.parametrize("name", ["kermany", "cohen"])
def test_listing_counts_equal_discovery(
    roots: tuple[Path, Path], name: str, flt: CohenFilter
) -> None:
    """The data-version listing counts by the rules discovery applies (no mirrored copy)."""
    root = roots[0] if name == "kermany" else roots[1]
    params = IngestParams(cohen=flt)
    source = get_source(name)
    counts = source.count_labels(_listing(root), lambda rel: (root / rel).read_bytes(), params)
    assert counts == count_records(source.discover(root, params), source.labels)
    if name == "kermany":
        assert counts[UNKNOWN_LABEL] == 3 and min(counts.values()) > 0
    else:
        assert set(counts) == {"covid"} and counts["covid"] > 0


def test_cohen_listing_without_metadata_is_named() -> None:
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv"):
        get_source("cohen").count_labels(["images/a.jpg"], bytes, IngestParams())


def test_versions_reject_unknown_sources_first(tmp_path: Path) -> None:
    """An unknown source name fails before any git or DVC work (tmp_path is no registry)."""
    with pytest.raises(ValueError, match=r"data\.sources\.nih"):
        list_versions(tmp_path, {"nih": ["raw/nih"]}, IngestParams())
    with pytest.raises(ValueError, match=r"data\.sources\.nih"):
        resolve(tmp_path, counts=True, sources={"nih": ["raw/nih"]})


def test_union_find_keeps_the_smallest_member() -> None:
    uf: UnionFind[int] = UnionFind(range(6))
    for a, b in ((5, 3), (3, 4), (1, 0)):
        uf.union(a, b)
    assert uf.roots() == {0: 0, 1: 0, 2: 2, 3: 3, 4: 3, 5: 3}
    assert 5 in uf and 6 not in uf
