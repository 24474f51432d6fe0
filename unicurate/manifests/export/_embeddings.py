"""``export --embeddings``: the run's CLIP embedding files (``unicurate.manifests.embeddings``) copied into
DEST/embeddings/<table>/ in the same clip-retrieval layout (``img_emb/``, ``text_emb/``, ``metadata/``), for every
format. The files keep their names and bytes; their metadata's keys are the exported samples' keys."""

from __future__ import annotations

from pathlib import Path

from unicurate.manifests import embeddings as emb
from unicurate.manifests import manifest as mf
from unicurate.manifests.export._base import Say, Source, inside


def copy(source: Source, dest: Path, say: Say) -> None:
    for table in source.tables():
        status = table.folders[0]
        n = 0
        for st, entry in emb.entries(source.manifest):
            if st != status:
                continue
            for f in entry["files"].values():
                target = inside(dest, dest / "embeddings" / table.name / Path(f["path"]).relative_to(
                    Path(emb.EMBEDDINGS_DIR) / status))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(mf.read_bytes(source.out_dir, f["path"]))
            n += entry["rows"]
        say(f"{table.name}: {n} embeddings -> {dest / 'embeddings' / table.name}")
