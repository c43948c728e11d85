"""The reporting checklist a journal asks for: which TRIPOD+AI items an evaluation fills.

TRIPOD+AI (Collins et al., BMJ 2024;385:e078378) lists what a paper that develops or
evaluates a prediction model must report: 27 items, several in parts (52 entries). An
evaluation computes many of the numbers; this module says, item by item, which the run
fills and where (``report.md``, its charts, the store's and the checkpoint's provenance),
which it fills in part (the run gives the facts, the author the reasons), and which only
the author can supply (the clinical context, ethics, funding, registration, the
interpretation). ``evaluate(out_dir=...)`` writes it as ``checklist.md``; every item appears
exactly once.

The items' wording here is a short paraphrase to place each one; the published checklist
is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

CITATION = ("Collins G.S. et al., TRIPOD+AI statement: updated guidance for reporting clinical "
            "prediction models that use regression or machine learning methods, "
            "BMJ 2024;385:e078378")
Status = Literal["filled", "partly", "author"]

# (item, section, topic): the 52 entries of TRIPOD+AI's 27 items, in the published order.
TRIPOD_AI: tuple[tuple[str, str, str], ...] = (
    ("1", "Title", "the study as developing or evaluating a prediction model, its population and outcome"),
    ("2", "Abstract", "a structured abstract (TRIPOD+AI for Abstracts)"),
    ("3a", "Introduction", "healthcare context and rationale, existing models"),
    ("3b", "Introduction", "target population and intended use in the care pathway"),
    ("3c", "Introduction", "known health inequalities between groups"),
    ("4", "Objectives", "whether the study develops, evaluates, or both"),
    ("5a", "Data", "sources of data, and their representativeness"),
    ("5b", "Data", "dates of the data"),
    ("6a", "Participants", "setting: care level, number and location of centres"),
    ("6b", "Participants", "eligibility criteria"),
    ("6c", "Participants", "treatments received, where relevant"),
    ("7", "Data preparation", "pre-processing and quality checks, alike across groups"),
    ("8a", "Outcome", "what is predicted, and how and when it was assessed"),
    ("8b", "Outcome", "qualifications and demographics of the outcome assessors"),
    ("8c", "Outcome", "blinding of the outcome assessment"),
    ("9a", "Predictors", "choice of the initial predictors, and any pre-selection"),
    ("9b", "Predictors", "definition of every predictor, and how and when it was measured"),
    ("9c", "Predictors", "qualifications and demographics of the predictors' assessors"),
    ("10", "Sample size", "how the study size was arrived at"),
    ("11", "Missing data", "how missing data were handled"),
    ("12a", "Analytical methods", "how the data were used: development, evaluation, partitioning"),
    ("12b", "Analytical methods", "how predictors were handled (transformations, scaling)"),
    ("12c", "Analytical methods", "model type, building, hyperparameters and internal validation"),
    ("12d", "Analytical methods", "heterogeneity across clusters (centres, archives)"),
    ("12e", "Analytical methods", "performance measures: discrimination, calibration, utility"),
    ("12f", "Analytical methods", "model updating or recalibration, if done"),
    ("12g", "Analytical methods", "for an evaluation, how the predictions were calculated"),
    ("13", "Class imbalance", "methods for class imbalance, and why"),
    ("14", "Fairness", "methods to address fairness across groups"),
    ("15", "Model output", "the model's output, and any thresholds and how they were chosen"),
    ("16", "Training versus evaluation", "differences between the development and evaluation data"),
    ("17", "Ethical approval", "the ethics committee's approval and consent"),
    ("18a", "Open science", "funding"),
    ("18b", "Open science", "conflicts of interest"),
    ("18c", "Open science", "protocol"),
    ("18d", "Open science", "registration"),
    ("18e", "Open science", "data sharing"),
    ("18f", "Open science", "code sharing"),
    ("19", "Patient and public involvement", "patient and public involvement"),
    ("20a", "Participants (results)", "the flow of participants and data through the study"),
    ("20b", "Participants (results)", "characteristics of the participants: demographics, outcome"),
    ("20c", "Participants (results)", "development and evaluation data compared"),
    ("21", "Model development", "participants and outcome events in each analysis"),
    ("22", "Model specification", "the full model, to be used or evaluated by others"),
    ("23a", "Model performance", "performance with confidence intervals"),
    ("23b", "Model performance", "performance across subgroups and clusters"),
    ("24", "Model updating", "the updated model and its performance, if updated"),
    ("25", "Interpretation", "overall interpretation, fairness in particular"),
    ("26", "Limitations", "limitations: non-representative data, sample size, overfitting"),
    ("27a", "Usability", "handling of poor-quality or unavailable input data in use"),
    ("27b", "Usability", "user interaction and the expertise users need"),
    ("27c", "Usability", "future research, generalisability"),
)


@dataclass(frozen=True)
class ChecklistItem:
    """One TRIPOD+AI entry: whether this run fills it, with what, and where to find it."""

    item: str
    section: str
    topic: str
    status: Status
    reported: str  # what the run gives (or what the author must add)
    where: str = ""


def tripod_ai(store, scores, report, config: Any) -> list[ChecklistItem]:
    """Every TRIPOD+AI entry for one evaluation, in the published order: filled from the
    store's and checkpoint's provenance, the scores and the report where the run knows the
    answer."""
    facts = _facts(store, scores, report, config)
    filled = _filled(facts)
    items = []
    for item, section, topic in TRIPOD_AI:
        status, reported, where = filled.get(item, ("author", _AUTHOR.get(item, "for the author"), ""))
        items.append(ChecklistItem(item, section, topic, status, reported, where))
    return items


_AUTHOR = {
    "1": "the paper's title", "2": "the paper's abstract",
    "3a": "the clinical context; the models this one is compared with",
    "3b": "who the model is for, and where in care it would be used",
    "3c": "the inequalities known for these findings and populations",
    "4": "the study's objectives",
    "8b": "who labelled the archive's images, and how",
    "8c": "whether the labels were made blind to the model's inputs",
    "9c": "who acquired the images, where that matters",
    "12f": "not done by this run (no updating or recalibration)",
    "17": "the ethics approval of each archive's use", "18a": "funding",
    "18b": "conflicts of interest", "18c": "the protocol, where there is one",
    "18d": "registration, where there is one", "19": "patient and public involvement",
    "24": "not done by this run (no updated model)", "25": "the interpretation",
    "26": "the limitations (the run's caveats are listed under 5a)",
    "27a": "how poor-quality images are handled in use (the run fails unreadable ones by name)",
    "27b": "who would use it, and the expertise needed",
    "27c": "future research",
}


def _facts(store, scores, report, config) -> dict[str, Any]:
    """What the run knows, gathered once."""
    ckpt = scores.checkpoint
    provenance = store.provenance
    rows = scores.scored.rows
    age = rows["age"].to_numpy(dtype=float) if "age" in rows else np.zeros(0)
    age = age[age >= 0]
    known = scores.scored.known
    positives = scores.scored.targets.sum(axis=0)
    labelled = (known.sum(axis=0) if known is not None
                else np.full(len(scores.scored.labels), len(scores.scored.targets)))
    return {
        "store": store.url, "archive": (provenance.get("archive") or {}).get("kind", "nih"),
        "synthetic": bool((provenance.get("archive") or {}).get("synthetic")),
        "n_rows": provenance.get("n_rows"), "failed": provenance.get("failed_rows", 0),
        "prep": provenance.get("preprocessing") or {},
        "backbone": provenance.get("backbone") or {},
        "split": provenance.get("split") or {}, "scored_split": report.split,
        "scored": report.n_rows, "patients": int(rows["patient_id"].nunique()) if len(rows) else 0,
        "training": ckpt.provenance.get("stores") or [],
        "train_config": ckpt.config, "labels": list(scores.scored.labels),
        "positives": dict(zip(scores.scored.labels, positives.astype(int).tolist(), strict=True)),
        "labelled": dict(zip(scores.scored.labels, np.asarray(labelled).astype(int).tolist(),
                             strict=True)),
        "female": float((rows["sex"] == "F").mean()) if "sex" in rows and len(rows) else float("nan"),
        "age": (float(np.median(age)), float(np.percentile(age, 25)), float(np.percentile(age, 75)))
        if len(age) else None,
        "report": report, "config": config, "checkpoint": ckpt,
    }


def _filled(f: dict[str, Any]) -> dict[str, tuple[Status, str, str]]:
    """The entries the run fills, in whole or in part: (status, what, where)."""
    return {**_method_items(f), **_result_items(f)}


def _method_items(f: dict[str, Any]) -> dict[str, tuple[Status, str, str]]:
    """Data, participants, preparation, outcome, predictors and analysis (items 5a-16)."""
    return {**_data_items(f), **_analysis_items(f)}


def _data_items(f: dict[str, Any]) -> dict[str, tuple[Status, str, str]]:
    """Data, participants, preparation, outcome, predictors, size, missing data (5a-11)."""
    report, ckpt = f["report"], f["checkpoint"]
    trained = ", ".join(f"{s.get('archive')} ({s.get('url')})" for s in f["training"]) or "its store"
    prep = f["prep"]
    caveats = "; ".join(report.caveats) or "none"
    return {
        "5a": ("partly", f"the {f['archive']} archive, store {f['store']} ({f['n_rows']} rows); the "
                         f"head trained on {trained}. Caveats: {caveats}. Representativeness: "
                         "the author's", "report.md (header), cxrdask info"),
        "5b": ("author", "the store records when features were extracted, not when images were "
                         "acquired: the archive's dates are the author's", ""),
        "6a": ("partly", f"one archive ({f['archive']}); its centres are the archive's publication's",
               ""),
        "6b": ("partly", f"every readable image of the archive's table; {f['failed']} unreadable "
                         "images failed by name; views kept: "
                         f"{report.views.get('views', 'all') if report.views else 'all'}",
               "report.md (views), cxrdask info (failed rows)"),
        "6c": ("author", "not recorded in the archives read", ""),
        "7": ("filled", "images decoded to 8-bit gray (DICOM: modality LUT, window, MONOCHROME1 "
                        f"inverted), resized to {prep.get('size')} px "
                        f"({prep.get('interpolation', 'bilinear')}), as {prep.get('channels', '?')}, "
                        "normalised as the backbone expects; the same steps for every row",
              "the store's provenance (cxrdask info)"),
        "8a": ("partly", f"{len(f['labels'])} findings as the {f['archive']} archive labels them "
                         "(harmonised names; uncertain and unmentioned labels missing, not "
                         "negative); how the archive made its labels is the author's",
               "report.md (table)"),
        "9a": ("partly", "every feature of the backbone, no pre-selection; the backbone's choice "
                         "is the author's", ""),
        "9b": ("filled", f"{f['backbone'].get('feature_dim')} features of {f['backbone'].get('name')} "
                         f"({f['backbone'].get('weights')}) pooled from the image, and the "
                         f"demographic inputs {', '.join(ckpt.input.get('demographics', [])) or 'none'}",
               "checkpoint (cxrdask info head.pt)"),
        "10": ("partly", f"{f['scored']:,} images of {f['patients']:,} patients scored ({f['scored_split']} "
                         "split); why this size is the author's", "report.md (header)"),
        "11": ("filled", "a missing label is left out of the loss and of every score of its "
                         f"finding (labelled rows per finding: {_counts(f['labelled'])}); "
                         f"unreadable images: {f['failed']}", "report.md (table)"),
    }


def _analysis_items(f: dict[str, Any]) -> dict[str, tuple[Status, str, str]]:
    """Analytical methods, imbalance, fairness, output, training against evaluation (12a-16)."""
    report, config = f["report"], f["train_config"]
    overlap = report.overlap.sentence() if report.overlap is not None else (
        "an internal score: the head's own store, its own splits")
    subgroups = report.audit is not None and report.audit.subgroups is not None
    return {
        "12a": ("filled", f"split {f['split'].get('method', '?')} with patients kept apart "
                          f"({f['split'].get('description', '')}); training and validation splits "
                          f"fit the head, the {f['scored_split']} split scores it",
                "report.md (header), cxrdask info"),
        "12b": ("filled", "inputs standardised with the training split's means and deviations"
                          if config.get("standardize", True) else "raw inputs", "checkpoint"),
        "12c": ("filled", f"a frozen backbone and a head of two hidden layers, Adam lr "
                          f"{config.get('lr')}, batch {config.get('batch_size')}, up to "
                          f"{config.get('epochs')} epochs, the epoch of lowest validation loss kept",
                "checkpoint (cxrdask info head.pt), history.csv"),
        "12d": ("partly", f"trained on {len(f['training']) or 1} store(s); per-archive scores "
                          "come from cxrdask study", "study.md (with cxrdask study)"),
        "12e": ("filled", "AUC per finding with patient-bootstrap 95% intervals, calibration (ECE, "
                          "reliability), operating points", "report.md, roc.png, reliability.png"),
        "12g": ("filled", "the backbone and preprocessing the head was trained with, then the head; "
                          "probabilities per finding", "report.md"),
        "13": ("filled", "positives weighted by negatives/positives in the loss"
                         if config.get("pos_weight", True) else "no weighting", "checkpoint"),
        "14": ("partly", "AUC by sex, age group and view, and the gaps between them"
                         if subgroups else "no subgroups computed", "report.md, subgroup_gaps.png"),
        "15": ("filled", "a probability per finding; thresholds chosen on the validation split, "
                         "never on the scored rows", "report.md (operating points)"),
        "16": ("filled", f"{report.external or 'internal score'}. {overlap}", "report.md (header)"),
    }


def _result_items(f: dict[str, Any]) -> dict[str, tuple[Status, str, str]]:
    """Open science, participants, development, specification and performance (18e-23b)."""
    report, ckpt = f["report"], f["checkpoint"]
    subgroups = report.audit is not None and report.audit.subgroups is not None
    age = f["age"]
    female = "" if np.isnan(f["female"]) else f"{f['female']:.0%} female, "
    ages = f"age median {age[0]:.0f} ({age[1]:.0f}-{age[2]:.0f}), " if age else ""
    return {
        "18e": ("partly", f"the {f['archive']} archive's own terms", ""),
        "18f": ("partly", "cxrdask's version and the checkpoint's sha256 are recorded; where the "
                          "study's code is shared is the author's", "checkpoint, report.json"),
        "20a": ("filled", f"{f['n_rows']} rows in the store, {f['failed']} failed, {f['scored']:,} "
                          f"scored; views: {_views(report)}", "report.md (header)"),
        "20b": ("filled", f"{f['patients']:,} patients, {female}{ages}positives per finding: "
                          f"{_counts(f['positives'])}", "report.md"),
        "20c": ("partly", "cxrdask shift compares two stores (separability, prevalence, "
                          "demographics)", "shift.md (with cxrdask shift)"),
        "21": ("filled", f"per finding, labelled rows and positives scored: "
                         f"{_counts(f['positives'])} positives", "report.md (table)"),
        "22": ("filled", f"the checkpoint {ckpt.path} (head weights, inputs, standardisation) and "
                         f"its backbone {f['backbone'].get('name')} ({f['backbone'].get('weights')})",
               "head.pt"),
        "23a": ("filled", f"mean AUC {report.mean_auc:.3f} over {len(report.mean_over)} findings; "
                          "each with its 95% interval", "report.md (table), roc.png"),
        "23b": ("filled" if subgroups else "author",
                "per subgroup (sex, age, view)" if subgroups else "not computed",
                "report.md (subgroups)" if subgroups else ""),
    }


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in values.items())


def _views(report) -> str:
    views = report.views or {}
    kept = views.get("kept") or {}
    return ", ".join(f"{family} {n}" for family, n in kept.items() if n) or "all"


def checklist_markdown(items: list[ChecklistItem]) -> str:
    """``checklist.md``: every entry once, what fills it and where, or that it is the author's."""
    counts = {s: sum(i.status == s for i in items) for s in ("filled", "partly", "author")}
    lines = [f"# TRIPOD+AI checklist\n\n{CITATION}. Of its {len(items)} entries, this run fills "
             f"{counts['filled']}, fills {counts['partly']} in part (the facts; the reasons are "
             f"the author's), and leaves {counts['author']} to the author. Topics are paraphrased; "
             "the published checklist is the reference.\n",
             "| item | section | topic | this run | what it reports | where |",
             "|---|---|---|---|---|---|"]
    shown = {"filled": "filled", "partly": "in part", "author": "**author**"}
    for i in items:
        lines.append(f"| {i.item} | {i.section} | {i.topic} | {shown[i.status]} | "
                     f"{i.reported.replace('|', '/')} | {i.where} |")
    return "\n".join(lines) + "\n"


__all__ = ["CITATION", "TRIPOD_AI", "ChecklistItem", "checklist_markdown", "tripod_ai"]
