"""Classify the chest X-rays (CR, DX) in a PACS and store the results back, over DICOMweb.

For each CR/DX instance of the chosen studies (--study UID, --since DATE on the Study Date, or
every study) the command retrieves the image (WADO-RS), classifies it and stores a DICOM
Comprehensive SR with the coded finding and a Secondary Capture of the heatmap into the same study
(STOW-RS). An instance that already has our SR for the same model version is skipped, so the
command can run again (e.g. from cron) without duplicates. An instance the input gate refuses (a
lateral view, not a radiograph...) is not analysed and gets nothing stored back: it is counted
"refused" with its reason here and in the audit trail. A failure on one instance is reported and
the others go on.

--url is the PACS's DICOMweb root, e.g. Orthanc's http://127.0.0.1:8042/dicom-web. HTTP basic
authentication: DEEPHEALTH_PACS_USER and DEEPHEALTH_PACS_PASSWORD (sent UTF-8 encoded), or in the URL
(http://user:password@host/dicom-web; the variables win); the password is never printed, logged or
recorded in the audit trail (shown as user:***@). Needs deephealth[pacs].

Exit status: 0 every instance stored, skipped or refused, 1 some failed, 2 the PACS or the model could not
be reached or loaded. Decision support only, not a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from deephealth.cli._audit import close_for_cli, open_for_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--url", required=True, help="DICOMweb root URL, e.g. http://127.0.0.1:8042/dicom-web")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--study", metavar="UID", default=None, help="only this Study Instance UID")
    which.add_argument("--since", metavar="DATE", default=None,
                       help="only studies whose Study Date (0008,0020: when the study was performed, as the "
                       "modality wrote it; not when it reached the PACS) is on or after DATE (YYYY-MM-DD); "
                       "already scored instances are skipped, so from cron look back several days")
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="model folder (default: $DEEPHEALTH_MODEL_DIR or the bundled model)")
    parser.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity in the Secondary Capture (default 0.4)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    parser.add_argument("--audit", action="store_true",
                        help="record every classification in the audit trail ($DEEPHEALTH_DATABASE_URL); only this "
                        "option turns it on here: DEEPHEALTH_AUDIT is deephealth serve's setting")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="HTTP timeout in seconds (default 60)")
    parser.add_argument("--attempts", type=int, default=3, metavar="N",
                        help="tries per HTTP request when the PACS is unreachable or busy (default 3)")


def _line(o) -> str:
    if o.status == "stored":
        p = o.probabilities or {}
        review = "  REVIEW: borderline, have it reviewed (reason in the SR)" if o.review else ""
        gate = o.gate or {}
        # the input gate's warning (e.g. an adult patient) is in the SR; the line says so, as predict does
        warn = f"  INPUT GATE WARNS: {'; '.join(gate.get('reasons') or ['see the SR'])}" if gate.get("status") == "warn" else ""
        return f"stored   {o.sop_uid}  {o.label}  P={p.get(o.label, 0.0):.3f}  SR {o.sr_uid}{review}{warn}"
    if o.status == "skipped":
        return f"skipped  {o.sop_uid}  (our SR for this model version exists)"
    if o.status == "refused":
        return f"REFUSED  {o.reason} (not analysed; nothing stored)"
    return f"FAILED   {o.error}"


def run(args: argparse.Namespace) -> int:
    """Process the PACS; prints one line per instance (or JSON). Exit 0 ok, 1 some failed, 2 setup error."""
    try:
        import dicomweb_client  # noqa: F401
        import highdicom  # noqa: F401

        from deephealth.pacs import PacsWorker, make_client, parse_since, redact_url, summarize
    except ImportError as exc:
        print(f"deephealth pacs needs the [pacs] extra: pip install 'deephealth[pacs]' ({exc})", file=sys.stderr)
        return 2
    from deephealth.artifact import ModelArtifactError
    from deephealth.inference import Predictor
    from deephealth.labels import INTENDED_USE

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not 0.0 <= args.alpha <= 1.0:
        print(f"--alpha must be between 0 and 1, got {args.alpha}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.model)
    except ModelArtifactError as exc:
        print(f"cannot load the model: {exc}", file=sys.stderr)
        return 2
    audit, ok = open_for_cli(args.audit)
    if not ok:
        return 2
    try:
        client = make_client(args.url, os.environ.get("DEEPHEALTH_PACS_USER"),
                             os.environ.get("DEEPHEALTH_PACS_PASSWORD"), timeout=args.timeout,
                             attempts=max(1, args.attempts))
    except ValueError as exc:  # not an http(s) URL
        print(f"--url {redact_url(args.url)}: {exc}", file=sys.stderr)
        if audit is not None:
            close_for_cli(audit)
        return 2
    worker = PacsWorker(client, predictor, alpha=args.alpha, audit=audit.record if audit else None,
                        client_address=redact_url(args.url))  # the audit keeps no password
    on_outcome = (lambda o: print(_line(o), flush=True)) if args.format == "table" else None
    try:
        outcomes = worker.run(study=args.study, since=since, on_outcome=on_outcome)
    except Exception as exc:  # the first query failed: wrong URL, PACS down, not DICOMweb
        msg = " ".join(str(exc).split())[:300]
        print(f"cannot query the PACS at {redact_url(args.url)}: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 2
    finally:
        if audit is not None:
            close_for_cli(audit)
    counts = summarize(outcomes)
    art = predictor.artifact
    notice = f"Model {art.name} {art.version}. {INTENDED_USE}"
    if args.format == "json":
        sys.stdout.write(json.dumps({"outcomes": [o.to_dict() for o in outcomes], "counts": counts,
                                     "model": {"name": art.name, "version": art.version, "sha256": art.sha256}},
                                    indent=2) + "\n")
        print(notice, file=sys.stderr)
    else:
        print(f"{len(outcomes)} instance(s): {counts['stored']} stored, {counts['skipped']} skipped, "
              f"{counts['refused']} refused, {counts['failed']} failed")
        print(notice)
    for o in outcomes:
        if o.status == "failed":
            print(f"error: {o.error}", file=sys.stderr)
    return 1 if counts["failed"] else 0
