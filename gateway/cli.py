"""``stt``: submit audio to the gateway, follow the jobs, fetch the transcripts.

Exit codes: 0 all went well; 1 a job failed or was cancelled, or the gateway refused a
request; 2 usage errors and an unreachable gateway; 130 interrupted (the jobs go on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from gateway.client import DEFAULT_URL, Job, SttClient, SttConnectionError, SttError
from gateway.listen import ListenError, ListenOptions, LiveText, file_pcm, listen, raw_pcm

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Result format -> file extension used with ``--out``.
EXTENSIONS = {
    "text": "txt",
    "json": "json",
    "verbose_json": "json",
    "srt": "srt",
    "vtt": "vtt",
    "tsv": "tsv",
    "rttm": "rttm",
    "diarized_json": "json",
}
#: Formats made of speakers: asking for one turns on ``--diarize speakers`` by itself.
SPEAKER_FORMATS = frozenset({"rttm", "diarized_json"})
#: The speaker-count options; the gateway's rules (stt_daemon/common/protocol/) are checked here
#: too, so that no file is uploaded only to be refused (this module never imports pydantic).
SPEAKER_HINTS = ("num_speakers", "min_speakers", "max_speakers")
MAX_SPEAKERS = 32


@dataclass
class Submitted:
    """One input file and its job."""

    name: str
    path: Path
    job: Job


def _outcome(job: Job) -> str:
    """``failed: bad_audio: ...``, ``cancelled``: a final status with its reason."""
    reason = job.reason
    return job.status if reason in ("", job.status) else f"{job.status}: {reason}"


def _say(message: str) -> None:
    """One line for people on stderr."""
    print(f"stt: {message}", file=sys.stderr, flush=True)


class Progress:
    """Per-file progress on a stream: redrawn in place on a terminal, else one line per change.

    A log file or CI output then gets only ``name: status`` lines, not bar frames.
    """

    def __init__(
        self, names: Sequence[str], stream: TextIO, *, tty: bool | None = None, bar: int = 20
    ) -> None:
        self.names = list(names)
        self.stream = stream
        if tty is None:
            # A block taller than the screen cannot be redrawn in place: log lines then.
            tty = stream.isatty() and len(self.names) < self._size()[1]
        self.tty = tty
        self.bar = bar
        self._seen: list[str | None] = [None] * len(self.names)
        self._drawn = 0
        self._name_width = min(max((len(n) for n in self.names), default=4), 32)

    def update(self, jobs: Sequence[Job]) -> None:
        """Show the jobs' current state (``jobs[i]`` belongs to ``names[i]``)."""
        if self.tty:
            self._redraw(jobs)
        else:
            self._log_changes(jobs)
        self.stream.flush()

    def _log_changes(self, jobs: Sequence[Job]) -> None:
        for i, (name, job) in enumerate(zip(self.names, jobs, strict=True)):
            if job.status == self._seen[i]:
                continue
            self._seen[i] = job.status
            if job.status == "queued":
                line = f"{name}: queued (job {job.id})"
            else:
                line = f"{name}: {_outcome(job)}"
            self.stream.write(line + "\n")

    def _redraw(self, jobs: Sequence[Job]) -> None:
        columns = self._size()[0]
        # Never wrap: a wrapped line would throw off the cursor movement. Names shrink
        # first, so that the bar and the status stay whole.
        name_width = max(8, min(self._name_width, columns - 1 - (self.bar + 20)))
        # Back to the first line of the block drawn last time, then overwrite each line.
        parts = [f"\r\x1b[{self._drawn}A"] if self._drawn else []
        for name, job in zip(self.names, jobs, strict=True):
            line = self.line(name, job, name_width)[: columns - 1]
            parts.append(f"\x1b[2K{line}\n")
        self._drawn = len(jobs)
        self.stream.write("".join(parts))

    def line(self, name: str, job: Job, width: int | None = None) -> str:
        """``name [#####-----]  50% processing``."""
        width = width or self._name_width
        if len(name) > width:
            name = "..." + name[-(width - 3) :]
        progress = 1.0 if job.status == "succeeded" else min(max(job.progress, 0.0), 1.0)
        filled = round(progress * self.bar)
        bar = "#" * filled + "-" * (self.bar - filled)
        return f"{name:<{width}} [{bar}] {progress:4.0%} {job.status}"

    def _size(self) -> tuple[int, int]:
        """Columns and lines of the stream's own terminal (stdout may be redirected)."""
        try:
            columns, lines = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            columns, lines = 0, 0
        # A pseudo-terminal with no size set says 0 by 0.
        return (columns if columns >= 40 else 80), (lines if lines >= 2 else 24)


def _job_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (flags left off are not sent)."""
    return {
        "model": args.model,
        "language": args.language,
        "task": args.task,
        "word_timestamps": True if args.word_timestamps else None,
        "prompt": args.prompt,
        "hotwords": args.hotwords,
        "vad_filter": True if args.vad_filter else None,
        "beam_size": args.beam_size,
        "temperature": args.temperature,
        "diarize": _diarize(args),
        **{name: getattr(args, name) for name in SPEAKER_HINTS},
        "callback_url": args.callback_url,
        "split": False if args.no_split else None,
    }


def _diarize(args: argparse.Namespace) -> str | None:
    """``--diarize``, or ``speakers`` when not given and the format is made of speakers."""
    diarize: str | None = args.diarize
    if diarize is None and args.format in SPEAKER_FORMATS:
        return "speakers"
    return diarize


def _speaker_problem(args: argparse.Namespace) -> str | None:
    """Why the speaker options cannot go together, or None."""
    given = [f"--{name.replace('_', '-')}" for name in SPEAKER_HINTS if getattr(args, name)]
    if given and args.diarize != "speakers":
        return f"{', '.join(given)} needs --diarize speakers"
    if args.num_speakers and (args.min_speakers or args.max_speakers):
        return "give --num-speakers, or --min-speakers/--max-speakers, not both"
    low, high = args.min_speakers, args.max_speakers
    if low and high and low > high:
        return f"--min-speakers ({low}) is more than --max-speakers ({high})"
    if args.format in SPEAKER_FORMATS and args.diarize == "none":
        return f"--format {args.format} lists speakers: use --diarize speakers (or channels)"
    return None


def _speaker_count(value: str) -> int:
    """argparse type: a number of speakers, 1 to MAX_SPEAKERS."""
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_SPEAKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_SPEAKERS}")
    return count


def _output_path(out: Path, item: Submitted, fmt: str) -> Path:
    return out / f"{item.path.stem}.{EXTENSIONS[fmt]}"


def _check_inputs(files: Sequence[str], out: Path | None, fmt: str) -> str | None:
    """Why the command cannot run, or None: checked before anything is submitted."""
    for name in files:
        if not Path(name).is_file():
            return f"{name}: no such file"
    if out is None:
        return None
    if out.exists() and not out.is_dir():
        return f"--out {out}: not a directory"
    targets: dict[str, str] = {}
    for name in files:
        target = f"{Path(name).stem}.{EXTENSIONS[fmt]}"
        if target in targets:
            return f"{targets[target]} and {name} would both be written to {out / target}"
        targets[target] = name
    return None


def _submit_all(
    client: SttClient, args: argparse.Namespace, echo: bool
) -> tuple[list[Submitted], int]:
    """Submit every file; a refused one is reported and counted, the rest go on."""
    options = _job_options(args)
    submitted: list[Submitted] = []
    refused = 0
    for name in args.files:
        path = Path(name)
        try:
            job = client.submit(path, **options)
        except SttConnectionError:
            raise
        except SttError as exc:
            _say(f"{name}: refused ({exc})")
            refused += 1
            continue
        submitted.append(Submitted(name, path, job))
        if echo:
            print(f"{job.id}\t{name}", flush=True)
    return submitted, refused


def _follow(client: SttClient, submitted: list[Submitted], poll: float) -> list[Job]:
    """Poll every job until all are final, showing progress on stderr."""
    progress = Progress([item.name for item in submitted], sys.stderr)
    jobs = [item.job for item in submitted]
    try:
        progress.update(jobs)
        while not all(job.is_final for job in jobs):
            time.sleep(poll)
            jobs = [job if job.is_final else client.get(job.id) for job in jobs]
            progress.update(jobs)
    except (KeyboardInterrupt, SttError):
        # Leave the ids behind: the jobs go on and `stt result ID` fetches them later.
        for item, job in zip(submitted, jobs, strict=True):
            if not job.is_final:
                print(f"{job.id}\t{item.name}\t{job.status}", file=sys.stderr)
        raise
    return jobs


def _result_text(client: SttClient, job_id: str, fmt: str) -> str:
    """The result as it is written out (JSON pretty-printed, a final newline)."""
    result = client.result(job_id, fmt)
    if isinstance(result, str):
        return result if result.endswith("\n") else result + "\n"
    return json.dumps(result, indent=2, ensure_ascii=False) + "\n"


def _write_results(
    client: SttClient, submitted: list[Submitted], jobs: list[Job], args: argparse.Namespace
) -> bool:
    """Write each succeeded job's result; report the others. True when all succeeded."""
    all_ok, first = True, True
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for item, job in zip(submitted, jobs, strict=True):
        if job.status != "succeeded":
            _say(f"{item.name}: {_outcome(job)}")
            all_ok = False
            continue
        text = _result_text(client, job.id, args.format)
        if args.out is not None:
            target = _output_path(args.out, item, args.format)
            target.write_text(text, encoding="utf-8")
            _say(f"{item.name} -> {target}")
            continue
        if len(submitted) > 1:
            # Several files on stdout: headers like tail(1) does.
            sys.stdout.write(("" if first else "\n") + f"==> {item.name} <==\n")
        sys.stdout.write(text)
        first = False
    sys.stdout.flush()
    return all_ok


def cmd_transcribe(args: argparse.Namespace, client: SttClient) -> int:
    """Submit files; with --wait (or --out) follow them and write the results."""
    wait = args.wait or args.out is not None
    problem = _speaker_problem(args) or _check_inputs(args.files, args.out, args.format)
    if problem:
        _say(problem)
        return EXIT_USAGE
    submitted, refused = _submit_all(client, args, echo=not wait)
    if not wait or not submitted:
        return EXIT_FAILED if refused else EXIT_OK
    jobs = _follow(client, submitted, args.poll)
    all_ok = _write_results(client, submitted, jobs, args)
    return EXIT_OK if all_ok and not refused else EXIT_FAILED


def cmd_status(args: argparse.Namespace, client: SttClient) -> int:
    """Print the job as pretty JSON."""
    print(json.dumps(client.get(args.id).raw, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_result(args: argparse.Namespace, client: SttClient) -> int:
    """Print the job's result in the chosen format."""
    sys.stdout.write(_result_text(client, args.id, args.format))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, client: SttClient) -> int:
    """Cancel a job and print its status after."""
    job = client.cancel(args.id)
    print(f"{job.id}\t{job.status}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace, client: SttClient) -> int:
    """Print the models the gateway serves, one a line (with their daemons when known)."""
    models = client.models()
    if not models:
        _say("no model is being served right now (no live daemon)")
    for model in models:
        name = model.get("id") or model.get("name") or json.dumps(model)
        if "daemons" in model:
            busy = f"{model.get('in_flight', '?')}/{model.get('capacity', '?')} busy"
            name = f"{name}\t{model['daemons']} daemon(s), {busy}"
        print(name)
    return EXIT_OK


def cmd_listen(args: argparse.Namespace, client: SttClient) -> int:
    """Stream a file or stdin live; committed lines on stdout as they land."""
    if args.source != "-" and not Path(args.source).is_file():
        _say(f"{args.source}: no such file")
        return EXIT_USAGE
    api_key = args.api_key if args.api_key is not None else os.environ.get("STT_API_KEY")
    options = ListenOptions(
        model=args.model,
        language=args.language,
        task=args.task,
        prompt=args.prompt,
        vad=not args.no_vad,
        fast=args.fast,
    )
    # Not a terminal: committed lines only, never the redrawn tail.
    text = LiveText(sys.stdout, tty=sys.stdout.isatty())
    try:
        source = raw_pcm(sys.stdin.buffer) if args.source == "-" else file_pcm(Path(args.source))
        asyncio.run(listen(client.url, source, options, text, api_key=api_key, say=_say))
    except ListenError as exc:
        _say(str(exc))
        return exc.exit_code
    return EXIT_OK


def _add_listen(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "listen", parents=[common], help="stream audio live and print the words as they land"
    )
    p.add_argument(
        "source",
        metavar="FILE|-",
        help="a file (decoded with PyAV), or - for raw 16 kHz mono s16le PCM on stdin",
    )
    p.add_argument(
        "--fast", action="store_true", help="as fast as the gateway keeps up, not real time"
    )
    p.add_argument("--model", help="model name (default: the gateway's first)")
    p.add_argument("--language", help="ISO 639-1 code, e.g. en (default: detected)")
    p.add_argument("--task", choices=["transcribe", "translate"])
    p.add_argument("--prompt", help="initial prompt: names, spelling, style")
    p.add_argument("--no-vad", action="store_true", help="do not end utterances on silence")
    p.set_defaults(handler=cmd_listen)


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("job options (left to the gateway when not given)")
    group.add_argument("--model", help="model name (default: the gateway's first)")
    group.add_argument("--language", help="ISO 639-1 code, e.g. en (default: detected)")
    group.add_argument("--task", choices=["transcribe", "translate"])
    group.add_argument("--word-timestamps", action="store_true", help="time every word")
    group.add_argument("--prompt", help="initial prompt: names, spelling, style")
    group.add_argument("--hotwords", help="words or phrases to favour, comma-separated")
    group.add_argument("--vad-filter", action="store_true", help="skip silence (Silero VAD)")
    group.add_argument("--beam-size", type=int, metavar="N", help="decoder beam size (1-10)")
    group.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    group.add_argument(
        "--diarize",
        choices=["none", "channels", "speakers"],
        help="speakers: tell voices apart; channels: one speaker per channel",
    )
    for name, what in (
        ("num", "how many speakers there are, if known"),
        ("min", "at least N speakers (else estimated)"),
        ("max", "at most N speakers (else estimated)"),
    ):
        group.add_argument(f"--{name}-speakers", type=_speaker_count, metavar="N", help=what)
    group.add_argument("--callback-url", metavar="URL", help="the gateway POSTs the result here")
    group.add_argument(
        "--no-split", action="store_true", help="keep a long recording in one piece, on one daemon"
    )


def _add_transcribe(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("transcribe", parents=[common], help="submit audio files")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio or video files")
    p.add_argument("--wait", action="store_true", help="follow the jobs, then print the results")
    p.add_argument("--format", choices=list(EXTENSIONS), default="text", help="default: text")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write <stem>.<ext> here (implies --wait)"
    )
    p.add_argument("--poll", type=float, default=0.5, metavar="S", help="seconds between polls")
    _add_job_options(p)
    p.set_defaults(handler=cmd_transcribe)


def _add_global_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """--url and --api-key, accepted before the command (``stt --url X models``) and after it.

    Under a command they default to SUPPRESS: argparse then sets them only when
    given there, so a value given before the command is not overwritten by a default.
    """
    default_url = os.environ.get("STT_URL") or DEFAULT_URL
    parser.add_argument(
        "--url",
        default=argparse.SUPPRESS if sub else default_url,
        help=f"gateway (default $STT_URL, else {DEFAULT_URL}; now {default_url})",
    )
    parser.add_argument(
        "--api-key",
        default=argparse.SUPPRESS if sub else None,
        metavar="KEY",
        help="sent as a Bearer token (default $STT_API_KEY, which keeps it out of ps and history)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``stt`` command line."""
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, sub=True)
    parser = argparse.ArgumentParser(
        prog="stt", description="Whisper transcription jobs: submit, follow, fetch."
    )
    _add_global_options(parser, sub=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_transcribe(sub, common)
    status = sub.add_parser("status", parents=[common], help="print a job as JSON")
    status.add_argument("id")
    status.set_defaults(handler=cmd_status)
    result = sub.add_parser("result", parents=[common], help="print a job's result")
    result.add_argument("id")
    result.add_argument("--format", choices=list(EXTENSIONS), default="text", help="default: text")
    result.set_defaults(handler=cmd_result)
    cancel = sub.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("id")
    cancel.set_defaults(handler=cmd_cancel)
    models = sub.add_parser("models", parents=[common], help="list the models served")
    models.set_defaults(handler=cmd_models)
    _add_listen(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Console script entry point; ``transport`` lets tests answer for the gateway."""
    args = build_parser().parse_args(argv)
    try:
        with SttClient(args.url, api_key=args.api_key, transport=transport) as client:
            code: int = args.handler(args, client)
            return code
    except SttConnectionError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except SttError as exc:
        _say(f"the gateway answered {exc}")
        return EXIT_FAILED
    except OSError as exc:
        _say(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
