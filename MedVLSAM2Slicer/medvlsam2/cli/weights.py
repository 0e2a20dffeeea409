"""``medvlsam2 weights``: list, download (resumable, verified), import, convert, verify, path, cache, delete.

``path`` and ``verify`` exit 1 when the entry is not installed; ``import`` and ``verify`` refuse a file
that does not load into the entry's architecture, naming the mismatch.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="manage model weights (downloads only when asked)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="manifest entries and whether they are installed")
    actions.add_parser("cache", help="print the cache folder ($MEDVLSAM2_HOME)")
    for action, text in [("download", "download, resuming a partial file, and verify"),
                         ("path", "print the installed file's path"), ("verify", "check the installed file"),
                         ("delete", "remove the installed file and any partial download")]:
        actions.add_parser(action, help=text).add_argument("name")
    imp = actions.add_parser("import", help="install a file (or model folder) obtained by other means (offline sites)")
    imp.add_argument("name")
    imp.add_argument("file", help="the checkpoint file, or the Hugging Face model folder of a Med3DVLM entry")
    conv = actions.add_parser("convert", help="convert a released .bin/.pth checkpoint to .safetensors (weights only; "
                              "refuses anything but tensors and plain values) and record its sha256")
    conv.add_argument("file", help="the .bin/.pth file (e.g. SegVol's pytorch_model.bin, VoxTell's checkpoint_final.pth)")
    conv.add_argument("-o", "--output", help="the .safetensors file to write (default: FILE with .safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import weights

    if args.action == "list":
        for row in weights.list_weights():
            mark = "installed" if row["installed"] else "-"
            print(f"{row['name']:24} {mark:10} {row['kind']:9} {row['license']:12} hf={row['repo'] or '-'}")
    elif args.action == "cache":
        print(weights.cache_dir())
    elif args.action in ("path", "verify"):
        path = weights.installed_path(args.name)  # not installed: InputError, exit 1 with how to install
        if args.action == "path":
            print(path)
        else:
            print(f"ok {args.name} sha256={weights.verify_file(weights.load_manifest()[args.name], path)}")
    elif args.action == "delete":
        print("deleted" if weights.delete(args.name) else "nothing to delete")
    elif args.action == "convert":
        from ..convert import convert

        record = convert(args.file, args.output)
        print(f"wrote {record['output']}: {record['tensors']} tensors, {record['parameters']} parameters, "
              f"sha256={record['sha256']} (record: {record['output']}.json)")
    elif args.action == "import":
        print(weights.import_file(args.name, args.file))
    elif args.action == "download":
        try:
            print(weights.download(args.name))  # huggingface_hub draws the progress bar
        except KeyboardInterrupt:  # partial files are kept
            print("cancelled; run the same command again to resume")
            return 130
    return 0
