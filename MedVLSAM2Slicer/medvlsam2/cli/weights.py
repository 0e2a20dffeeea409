"""``medvlsam2 weights``: list, download (resumable, verified), import, verify, path, cache, delete."""

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
    imp = actions.add_parser("import", help="install a file obtained by other means (offline sites)")
    imp.add_argument("name")
    imp.add_argument("file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import weights

    if args.action == "list":
        for row in weights.list_weights():
            mark = "installed" if row["installed"] else "-"
            print(f"{row['name']:24} {mark:10} {row['license']:12} sha256={row['sha256'][:16]}")
    elif args.action == "cache":
        print(weights.cache_dir())
    elif args.action == "path":
        print(weights.weight_path(args.name))
    elif args.action == "verify":
        path = weights.weight_path(args.name)
        if not path.is_file():
            print(f"{args.name} is not installed")
            return 1
        print(f"ok sha256={weights.verify_file(weights.load_manifest()[args.name], path)}")
    elif args.action == "delete":
        print("deleted" if weights.delete(args.name) else "nothing to delete")
    elif args.action == "import":
        print(weights.import_file(args.name, args.file))
    elif args.action == "download":
        from tqdm import tqdm

        with tqdm(unit="B", unit_scale=True, desc=args.name) as bar:
            def progress(done: int, total: int | None) -> None:
                bar.total = total
                bar.update(done - bar.n)
            try:
                print(weights.download(args.name, progress=progress))
            except KeyboardInterrupt:  # the .part file is kept
                print("cancelled; run the same command again to resume")
                return 130
    return 0
