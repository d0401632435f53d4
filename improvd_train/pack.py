"""Prepared tokens (and starting weights) in one compact file that travels to a GPU machine.

    python -m improvd_train.pack --data data/performance --init exported/improvd.onnx --out runs/pack.npz

One uncompressed .npz: the train and validation tokens as uint16 with their piece offsets
(about 2 bytes an event: the 17.5 M training events take 35 MB), the starting weights in the
Keras layout if --init is given, and a small JSON header (the data folder, its manifest, the
vocabulary size) so that the run it feeds can be exported here. Refuses to write more than
--max-mib, what one command may carry. improvd_train.torch_train reads it with numpy alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from improvd import vocab
from improvd_train import train

MAX_MIB = 60.0  # a command carries 64 MiB at most, the script and its tree included


def pack(data: Path, out: Path, init: Path | None = None, max_mib: float = MAX_MIB) -> int:
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "validation"):
        archive = np.load(data / f"{split}.npz")
        arrays[f"{split}_tokens"] = archive["tokens"].astype(np.uint16)
        arrays[f"{split}_offsets"] = archive["offsets"].astype(np.int64)
    if init is not None:
        arrays.update({f"init:{k}": v for k, v in train.exported_arrays(init).items()})
    manifest = data / "manifest.json"
    header = {"data": str(data), "vocab_size": vocab.VOCAB_SIZE, "vocab": vocab.spec(),
              "init": str(init) if init else None,
              "manifest": json.loads(manifest.read_text()) if manifest.exists() else None}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    size = sum(a.nbytes for a in arrays.values())
    if size > max_mib * 2**20:
        raise SystemExit(f"pack: {size / 2**20:.1f} MiB is more than --max-mib {max_mib}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        np.savez(f, **arrays)
    return out.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(train.DATA))
    parser.add_argument("--init", type=Path, help="starting weights: an exported .onnx (int8 is dequantized)")
    parser.add_argument("--out", type=Path, default=Path("runs/pack.npz"))
    parser.add_argument("--max-mib", type=float, default=MAX_MIB)
    args = parser.parse_args(argv)
    size = pack(args.data, args.out, args.init, args.max_mib)
    print(f"pack: wrote {args.out} ({size / 2**20:.1f} MiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
