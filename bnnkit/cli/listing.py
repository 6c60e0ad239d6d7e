"""``bnnkit list models|methods|binarizers``."""

from __future__ import annotations

import argparse
import re

WHAT = ("models", "methods", "binarizers", "recipes")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list models, methods, binarizers or shipped recipes")
    p.add_argument("what", choices=WHAT, help="what to list")
    p.set_defaults(run=run)


def plain(text: str) -> str:
    """reStructuredText inline markup as plain text: ``code`` and :role:`x` -> x, *x* -> x."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\1", text)


def _first_line(obj: object) -> str:
    """The docstring's first sentence, on one line, without markup."""
    paragraph = (obj.__doc__ or "").strip().split("\n\n")[0]
    text = plain(" ".join(paragraph.split()))
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def run(args: argparse.Namespace) -> int:
    from bnnkit.binarize import list_binarizers
    from bnnkit.methods import get_method, list_methods
    from bnnkit.models import list_models, model_info

    if args.what == "models":
        for name in list_models():
            info = model_info(name)
            size = "x".join(map(str, info.input_size))
            print(f"{name:20s} {info.dataset:9s} input {size:10s} {_first_line(info.fn)}")
    elif args.what == "methods":
        for name in list_methods():
            method = get_method(name)
            fields = ", ".join(f"{k}={v!r}" for k, v in method.fields().items())
            print(f"{name:10s} {_first_line(type(method))}" + (f"  [{fields}]" if fields else ""))
    elif args.what == "recipes":
        from bnnkit.config import list_recipes, recipes_dir

        names = list_recipes()
        print(f"recipes in {recipes_dir()}:" if names else f"no recipes in {recipes_dir()}")
        for name in names:
            print(f"  {name}")
    else:
        for name in list_binarizers():
            print(name)
    return 0
