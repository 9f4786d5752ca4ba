"""Options shared by several commands, defined once as ``Annotated`` types, and the choices that
``--help`` lists and shells complete (each built from the library's own tuple of choices)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tracemark.audit.references import WHITEBOX_STATISTICS
from tracemark.cli.command import choices
from tracemark.marking.engine import ENGINES
from tracemark.marking.schemes import SCHEMES
from tracemark.marking.selection import SELECTIONS
from tracemark.marking.shards import FORMATS
from tracemark.marking.trigger import STRATEGIES, TRIGGER_SCOPES

Scheme = choices("Scheme", list(SCHEMES))
Strategy = choices("Strategy", STRATEGIES)
TriggerScope = choices("TriggerScope", TRIGGER_SCOPES)
Selection = choices("Selection", SELECTIONS)
OnError = choices("OnError", ("fail", "skip"))
Engine = choices("Engine", ENGINES)
Format = choices("Format", FORMATS)
Statistic = choices("Statistic", WHITEBOX_STATISTICS)
Dtype = choices("Dtype", ("auto", "fp32", "fp16", "bf16"))

HomeOpt = Annotated[Optional[Path], typer.Option(
    "--home", envvar="TRACEMARK_HOME", help="Registry folder (default ~/.tracemark).")]

# --- writing copies (protect, materialize, reissue) ---------------------------------------------
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="Worker processes for marking (default: up to 2).")]
EngineOpt = Annotated[Engine, typer.Option(
    "--engine", help="local (this machine's process pool) | ray (Ray tasks; needs the optional ray package).")]
AddressOpt = Annotated[Optional[str], typer.Option(
    "--address", help="With --engine ray: a running Ray cluster (e.g. HOST:6379) whose nodes see the input and "
    "output paths; default: a local Ray instance.")]
#: As diffusers' training scripts' --caption_column / --image_column.
CaptionColumnOpt = Annotated[Optional[str], typer.Option(
    "--caption-column", help="Caption column of the metadata (default: the one of text, caption, prompt, "
    "description it has).")]
ImageColumnOpt = Annotated[Optional[str], typer.Option(
    "--image-column", help="Image file column of the metadata (default: file_name).")]

# --- JSON output -------------------------------------------------------------------------------
_JSON_HELP = ("Write {} as one JSON document to FILE, or print it (--json alone or --json -); never inside the "
              "tracemark home, never over a file unless --force.")
VerdictJsonOpt = Annotated[Optional[Path], typer.Option(
    "--json", metavar="FILE|-", help=_JSON_HELP.format("the verdict"))]
ListJsonOpt = Annotated[Optional[Path], typer.Option("--json", metavar="FILE|-", help=_JSON_HELP.format("the list"))]
JsonlOpt = Annotated[bool, typer.Option(
    "--jsonl", help="Print one JSON object a line instead of a table (streaming).")]
ForceJsonOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")]

# --- verdicts (trace-files, audit) -------------------------------------------------------------
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Family-wise false-accusation rate.")]
DecoysOpt = Annotated[int, typer.Option("--decoys", help="Decoy keys for the null distribution.")]

# --- models (audit, generate) ------------------------------------------------------------------
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available) | cpu | cuda[:N].")]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16.")]
