#!/usr/bin/env python3
"""Writes the articles of a SQuAD file as Markdown files, one per article, for the README's
document-index example: `python3 examples/make_wiki.py [SQUAD.json] [OUT_DIR]`.

Defaults: ../shared/data/xquad-en-train.json (the 36 XQuAD articles) into wiki/. Each file is
named after the article's title and holds a `# Title` heading, then the paragraphs separated by
blank lines.
"""
import json
import pathlib
import sys


def main() -> int:
    source = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/xquad-en-train.json")
    out = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "wiki")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {source}: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for article in data:
        title = article["title"]
        paragraphs = [p["context"] for p in article["paragraphs"]]
        text = f"# {title.replace('_', ' ')}\n\n" + "\n\n".join(paragraphs) + "\n"
        (out / f"{title.replace('/', '_')}.md").write_text(text, encoding="utf-8")
    print(f"{out}: {len(data)} articles written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
