"""verl's rule-based scorers, written here so a verl dataset scores as it did there without verl
installed, and the dispatch by `data_source` that verl's `default_compute_score` does.

    data.reward_fn: cropi.data.scorers:default_compute_score

| data_source | scorer | returns |
| --- | --- | --- |
| openai/gsm8k | gsm8k: the last '#### N' (strict) | 1.0 / 0.0 |
| lighteval/MATH, DigitalLearningGmbH/MATH-lighteval, HuggingFaceH4/MATH-500 | math: the last \\boxed{}, normalised | 1.0 / 0.0 |
| math_dapo, math, math_dapo_reasoning, aime* | dapo: the last 'Answer: ...' line, normalised | {"score": 1.0 / -1.0, "acc", "pred"} |

The rules follow verl's published behaviour (verl/utils/reward_score/gsm8k.py, math_reward.py,
math_dapo.py; tests/test_scorers.py checks the worked cases): only the last 300 characters of a
response are read by the gsm8k and dapo scorers; comparisons are of normalised strings, never
numeric. The DAPO scorer's -1 for a wrong answer needs `data.reward_range: [-1, 1]`.
"""

from __future__ import annotations

import re

from cropi.errors import CropiError

CLIP = 300

# ---- GSM8K ------------------------------------------------------------------------------------

_GSM_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_GSM_FLEX = re.compile(r"(\-?[0-9\.\,]+)")


def gsm8k_extract(solution: str, method: str = "strict") -> str | None:
    text = solution[-CLIP:]
    if method == "strict":
        found = _GSM_STRICT.findall(text)
        return found[-1].replace(",", "").replace("$", "") if found else None
    found = _GSM_FLEX.findall(text)
    if not found:
        return None
    for x in reversed(found):  # the last that is a number at all
        if x not in ("", "."):
            return x
    return found[0]


def gsm8k_score(solution: str, ground_truth: str, method: str = "strict", format_score: float = 0.0,
                score: float = 1.0) -> float:
    ans = gsm8k_extract(solution, method)
    if ans is None:
        return 0.0
    return score if ans == str(ground_truth) else format_score


# ---- MATH (lighteval) -------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The last \\boxed{...} (braces balanced) or '\\boxed X'; a \\fbox{...} is found but unboxes to nothing."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    i = text.rfind("\\boxed")
    if i < 0:
        i = text.rfind("\\fbox")
        if i < 0:
            return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j + 1]
    return None


def unbox(s: str) -> str | None:
    if s.startswith("\\boxed "):
        return s[len("\\boxed "):]
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[len("\\boxed{"):-1]
    return None  # \fbox{...}: verl's remove_boxed refuses it


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p.startswith("{"):
            out += p
            continue
        if len(p) < 2:
            return s
        a, b, rest = p[0], p[1], p[2:]
        out += f"{{{a}}}{{{b}}}{rest}" if b != "{" else f"{{{a}}}{b}{rest}"
    return out


def _fix_a_slash_b(s: str) -> str:
    if len(s.split("/")) != 2:
        return s
    a, b = s.split("/")
    try:
        ia, ib = int(a), int(b)
    except ValueError:
        return s
    return f"\\frac{{{ia}}}{{{ib}}}" if s == f"{ia}/{ib}" else s


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def strip_math(s: str) -> str:
    """verl's MATH normalisation (math_reward.strip_string), step by step."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # units: keep what comes before them
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise ValueError("two unit texts")
        s = parts[0]
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    halves = s.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        s = halves[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def math_equiv(a: str | None, b: str | None) -> bool:
    if a is None and b is None:
        return True
    if a is None or b is None:
        return False
    try:
        return strip_math(a) == strip_math(b)
    except Exception:  # noqa: BLE001 -- verl falls back to the raw strings
        return a == b


def math_score(solution: str, ground_truth: str) -> float:
    boxed = last_boxed(solution)
    if boxed is None:
        return 0.0
    ans = unbox(boxed)
    return 1.0 if ans is not None and math_equiv(ans, str(ground_truth)) else 0.0


# ---- DAPO (math_dapo) -------------------------------------------------------------------------

_ANSWER = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
_SUBS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
         (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
_REMOVE = ["square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue", "points",
           "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges", "students",
           "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3",
           "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots"]


def dapo_normalise(answer: str) -> str:
    """verl's normalize_final_answer (Minerva's), step by step."""
    s = answer.split("=")[-1]
    for a, b in _SUBS:
        s = s.replace(a, b)
    for r in _REMOVE:
        s = s.replace(r, "")
    s = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s)
    s = re.sub(r"(\\text\{)(.*?)(\})", "\\2", s)
    s = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", s)
    s = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", s)
    s = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", s)
    s = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", s)
    s = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", s)
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s.strip()


def dapo_score(solution: str, ground_truth: str, strict_box_verify: bool = False) -> dict:
    """{"score": 1.0 | -1.0, "acc": bool, "pred": str | None}."""
    if strict_box_verify:
        boxed = last_boxed(solution[-100:])
        pred = unbox(boxed) if boxed is not None and boxed.startswith("\\boxed{") else None
        ok = pred is not None and pred == str(ground_truth)
    else:
        found = _ANSWER.findall(solution[-CLIP:])
        pred = dapo_normalise(found[-1]) if found else "[INVALID]"
        ok = pred == dapo_normalise(str(ground_truth))
    return {"score": 1.0 if ok else -1.0, "acc": ok, "pred": pred}


# ---- dispatch ---------------------------------------------------------------------------------

MATH_SOURCES = ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500")
DAPO_SOURCES = ("math_dapo", "math", "math_dapo_reasoning")


def default_compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None):
    """verl's dispatch by data_source to the built-in scorers (the rule-based ones; verl's code,
    search and geometry scorers are not built in)."""
    if data_source == "openai/gsm8k":
        return gsm8k_score(solution_str, ground_truth)
    if data_source in MATH_SOURCES:
        return math_score(solution_str, ground_truth)
    if data_source in DAPO_SOURCES or data_source.startswith("aime"):
        return dapo_score(solution_str, ground_truth)
    raise CropiError(f"data_source {data_source!r} has no built-in scorer (cropi.data.scorers: openai/gsm8k, "
                     f"{', '.join(MATH_SOURCES)}, {', '.join(DAPO_SOURCES)}, aime*); set data.reward_fn to your own")
