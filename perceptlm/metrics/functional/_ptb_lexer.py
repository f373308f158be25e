"""Pure-Python port of the Stanford PTB lexer used by coco-caption.

coco-caption (pycocoevalcap/tokenizer/ptbtokenizer.py) runs
``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` from
stanford-corenlp-3.4.1.jar.  This module re-implements the rules of that
version's ``PTBLexer.flex`` with the option set coco-caption gets
(parentheses/brackets -> -LRB- etc., LaTeX quotes, "..." ellipses, "--" dashes,
currency and fraction normalisation, non-breaking space inside fractions and
phone numbers, no Americanization, no slash/asterisk escaping).

Matching follows JFlex: at each position the longest match wins, trailing
context (``r1/r2``) counts toward the length, ties go to the earlier rule.
Characters outside the Basic Multilingual Plane are untokenizable there (the
lexer reads UTF-16 units) and are dropped, as are other untokenizable ones.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["lex"]


def _class_body(pred) -> str:
    """Character-class body (no brackets) of the BMP code points satisfying ``pred``."""
    parts, start, prev = [], None, None
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF or not pred(chr(cp)):
            continue
        if start is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append((start, prev))
        start = prev = cp
    parts.append((start, prev))
    esc = lambda c: "\\u%04x" % c  # noqa: E731
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in parts)


_cat = unicodedata.category
_L = _class_body(lambda c: _cat(c)[0] == "L")
_D = _class_body(lambda c: _cat(c) == "Nd")
_U = _class_body(lambda c: _cat(c) == "Lu")
# Extra ranges that PTBLexer.flex adds to its WORD letters.
_WORD_EXTRA = (
    r"\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385"
    r"\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD"
    r"\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF"
    r"\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903"
    r"\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD"
    r"\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2"
    r"\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A"
    r"\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD"
)


def _ci(word: str) -> str:
    """Caseless literal (JFlex %caseless applies to literals, not to character classes)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _alts(*words: str) -> str:
    return "(?:" + "|".join(words) + ")"


LET = f"[{_L}]"  # [:letter:]
DIG = rf"[{_D}\u07C0-\u07C9]"
SPLET = rf"&[aeiouAEIOU]{_alts(_ci('acute'), _ci('grave'), _ci('uml'))};"
WLET = rf"(?:[{_L}{_WORD_EXTRA}]|{SPLET})"
SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
NEWLINE = r"(?:\r\n|[\r\n\u2028\u2029\u000B\u000C\u0085])"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
_SGML_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|" + _SGML_NAME + r"(?:[ ]+(?:" + _SGML_NAME
        + r"""[ ]*=[ ]*(?:'[^']*'|"[^"]*")|""" + _SGML_NAME + r"))*[ ]*\/?|\/" + _SGML_NAME + r")[ ]*>")
SENTEND = f"{SPACENL}(?:{SPACENL}|[{_U}]|{SGML})"
NUM = rf"(?:{DIG}*(?:[.:,\u00AD\u066B\u066C]{DIG}+)+|{DIG}+)"
APOS = rf"(?:['\u0092\u2019]|{_ci('&apos;')})"
APOSETC = rf"(?:{APOS}|[`\u0091\u2018\u201B])"
HYPHEN = r"[-_\u058A\u2010\u2011]"
ALNUM = f"(?:{LET}|{DIG})"
WORD = f"{WLET}(?:{WLET}|{DIG})*(?:[.!?]{WLET}(?:{WLET}|{DIG})*)*"
REDAUX = rf"{APOS}(?:[msdMSD]|{_ci('re')}|{_ci('ve')}|{_ci('ll')})"
SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
SREDAUX = f"[nN]{APOSETC}[tT]"
_ACRO_SPECIAL = (
    _alts(*map(_ci, ("Canada", "Sino", "Korean", "EU", "Japan", "non"))) + _ci("-U.S"),
    _ci("U.S.-") + _alts(_ci("U.K"), _ci("U.S.S.R")),
)
ACRO = _alts(r"[A-Za-z](?:\.[A-Za-z])*", *_ACRO_SPECIAL)
ACRO2 = _alts(r"[A-Za-z](?:\.[A-Za-z])+", *_ACRO_SPECIAL)
THING_PART = rf"(?:[dDoOlL]{APOSETC}{ALNUM})?{ALNUM}+"
THING = f"{THING_PART}(?:{HYPHEN}{THING_PART})*"
HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{ACRO2}\.|[A-Za-z0-9\u00AD]+))+"
THINGA = rf"[A-Z]+(?:(?:[+&]|{_ci('&amp;')})[A-Z]+)+"
INSENTP = r"[,;:\u3001]"
FNCHAR = f"(?:{WLET}|{DIG})"
FILENAME_EXT = sorted(("bat bmp c class cgi cpp dll doc docx exe gif gz h htm html jar java jpeg jpg mov mp3 pdf php "
                       "pl png ppt ps py sql tar txt wav x xml zip").split(), key=len, reverse=True)
DBLQUOT = rf"(?:\"|{_ci('&quot;')})"
QUOTES = (  # alternatives ordered longest-first for Python's leftmost-first alternation
    r"(?:''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}"
    r"|['\u0092\u2019]|" + _ci("&apos;") + ")"
)

_ABMONTH = ["Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"]
_ABDAYS = ["Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri"]
# "[A]rk" style entries: the first letter is a character class, hence case-sensitive.
_ABSTATE_CS = ["Az", "Ark", "Del", "Ill", "La", "Mass", "Miss", "Ore", "Pa", "Tex", "Wash"]
_ABSTATE = ["Ala", "Ariz", "Calif", "Colo", "Conn", "Ct", "Dak", "Fla", "Ga", "Ind", "Kans?", "Ky", "Md",
            "Mich", "Minn", "Mo", "Mont", "Neb", "Nev", "Okla", "Penn", "Tenn", "Va", "Vt", "Wisc?", "Wyo"]
_ABCOMP = ["Inc", "Cos?", "Corp", "Ltd", "Plc", "Rt", "Bancorp", "Bhd", "Assn", "Univ", "Intl", "Sys"]
_ABOTHER1 = ["tel", "est", "ext", "sq", "Jr", "Sr", "Bros", "Ed.D", "Ph.D", "Blvd", "Rd", "Esq", "etc", "al",
             "seq", "Bldg"]
_ABTITLE = ["Mr", "Mrs", "Ms", "Drs?", "Profs?", "Sens?", "Reps?", "Attys?", "Lt", "Col", "Gen", "Messrs",
            "Govs?", "Adm", "Rev", "Maj", "Sgt", "Cpl", "Pvt", "Capt", "Ste?", "Ave", "Pres", "Lieut", "Rt",
            "Hon", "Brig", "Co?mdr", "Pfc", "Spc", "Supts?", "Det", "Mt", "Ft", "Adj", "Adv", "Asst", "Assoc",
            "Ens", "Insp", "Mlle", "Mme", "Msgr", "Sfc"]
_ABBREV4_OTHER = ["vs", "Alex", "Wm", "Jos", "Cie", "a.k.a", "cf", "TREAS", "Ph", "Invt", "Elec", "Natl",
                  "Mfg", "Mtg", "Dept"]


def _ci_opt(word: str) -> str:
    """Caseless literal that keeps a trailing ``?`` (e.g. ``Cos?``) and turns ``.`` into ``\\.``."""
    if word.endswith("?"):
        return f"(?:{_ci(word[:-2])}{_ci(word[-2])}?)"
    if word == "Co?mdr":
        return _ci("C") + _ci("o") + "?" + _ci("mdr")
    return _ci(word)


def _cs_first(word: str) -> str:
    return f"[{word[0]}]" + _ci(word[1:])


ABBREV1 = _alts(
    *map(_ci_opt, _ABMONTH + _ABDAYS + _ABSTATE + _ABCOMP + _ABOTHER1),
    *map(_cs_first, _ABSTATE_CS),
    _ci("P") + _ci("p") + "?" + _ci("t") + "[ye]" + _ci("s") + "?",
) + r"\."
# Multi-letter acronyms first: Python alternation is leftmost-first, JFlex takes the longest.
ABBREV4 = _alts(ACRO2, *map(_ci_opt, _ABTITLE + _ABBREV4_OTHER), "[M]" + _ci("iss"), ACRO)
ABBREV3 = _alts(*map(_ci_opt, ["ca", "figs?", "prop", "nos?", "art", "bldg", "pp", "op"])) + r"\."
_ACRONYM_NEXT = _alts(
    *(f"[{w[0]}]{_ci(w[1:])}" for w in (
        "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many "
        "More Now Once One Other Our She Since So Some Such That The Their Then There These They This We When "
        "While What Yet You").split()),
    r"[M]" + _ci("r") + r"\.", r"[M]" + _ci("s") + r"\.", SGML,
)
PHONE_A = r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}"
PHONE_B = r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"
MISCSYMBOL = (
    r"[+%&~\^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3"
    r"\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D"
    r"\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042"
    r"\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F"
    r"\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]"
)
URL_LABEL = r"[^ \t\n\f\r\"`'<>|.!?(){},-_$]"  # ",-_" is a range in the original, kept as such
URL_SPAN = r"[^ \t\n\f\r\"<>|()]*"
URL_PATH = r"(?:\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
ASIAN = r"[\-\^x=~<>']"


# --- token transformations -------------------------------------------------------------------

def _latex_quotes(s: str, left: bool) -> str:
    s = re.sub(r"&apos;|'", "`" if left else "'", s)
    s = re.sub(r'"|&quot;', "``" if left else "''", s)
    s = re.sub("[\u0091\u2018\u201B\u2039]", "`", s)
    s = re.sub("[\u0092\u2019\u203A]", "'", s)
    s = re.sub("[\u0093\u201C\u00AB]", "``", s)
    return re.sub("[\u0094\u201D\u00BB]", "''", s)


def _no_soft_hyphen(s: str) -> str:
    return s.replace("\u00AD", "") or "-"


def _parens(s: str) -> str:
    return s.replace("(", "-LRB-").replace(")", "-RRB-")


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}

KEEP = lambda s: s  # noqa: E731
DROP = None
NL = "NL"  # newline token (-preserveLines)
_amp = lambda s: re.sub(r"(?i:&amp;)", "&", s)  # noqa: E731
_right = lambda s: _latex_quotes(s, False)  # noqa: E731
_left = lambda s: _latex_quotes(s, True)  # noqa: E731

# (first-character class, main pattern, trailing context or None, action, pushback).
# pushback=k re-lexes the last k characters of the main match; pushback=-1 emits the whole
# match and then re-lexes its final period (the "U.S." + "." reduplication); pushback=-2 is
# -1 except that a two-character match ("I.") gives up its period instead.
_RULES = [
    (r"[cCfF]", _alts(_ci("c++"), "[cCfF]#"), None, KEEP, 0),
    (r"[cC']", _alts(_ci("cannot"), "'" + _ci("twas")), None, KEEP, 3),
    (r"[gGlLwW']", _alts("'" + _ci("tis"), *map(_ci, ("gonna", "gotta", "lemme", "gimme", "wanna"))), None, KEEP, 2),
    (r"<", SGML, None, lambda s: s.replace(" ", "\u00A0"), 0),
    (r"[&\u0096\u0097\u2013\u2014\u2015]", _alts(_ci("&MD;"), _ci("&mdash;"), _ci("&ndash;"),
                                                   r"[\u0096\u0097\u2013\u2014\u2015]"), None, lambda s: "--", 0),
    (r"&", _ci("&amp;"), None, _amp, 0),
    (r"&", "&" + _alts(*map(_ci, "HT TL UR LR QC QL QR odq cdq".split()), "#[0-9]+") + ";", None, KEEP, 0),
    (f"[&{_L}{_WORD_EXTRA}]", WORD, REDAUX, _no_soft_hyphen, 0),
    (r"[A-Za-z\u00AD]", SWORD, SREDAUX, _no_soft_hyphen, 0),
    (f"[&{_L}{_WORD_EXTRA}]", WORD, None, _no_soft_hyphen, 0),
    # APOWORD, one entry per alternative so that the longest one wins.
    (r"['\u0092\u2019&]", f"{APOS}[nN]{APOS}?", None, KEEP, 0),
    (r"[lLdDjJ]", f"[lLdDjJ]{APOS}", None, KEEP, 0),
    (r"[dDsSoO]", _alts(_ci("Dunkin"), _ci("somethin"), _ci("ol")) + APOS, None, KEEP, 0),
    (r"['\u0092\u2019&]", APOS + _alts(_ci("em"), _ci("cause"), _ci("til") + "[lL]?", "[2-9]0[sS]"), None, KEEP, 0),
    (r"[A-HJ-XZn]", f"[A-HJ-XZn]{APOSETC}{LET}{{2}}{LET}*", None, KEEP, 0),
    (LET, f"{LET}+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{LET}*", None, KEEP, 0),
    (r"[cCnNeEsSlL]", _alts(_ci("cont'd") + r"\.?", *map(_ci, ("nor'easter", "c'mon", "e'er", "s'mores", "ev'ry",
                                                                "li'l", "nat'l"))), None, KEEP, 0),
    (r"[oO]", f"[oO]{APOSETC}[oO]", None, KEEP, 0),
    (r"[yY]", f"[yY]{APOS}", LET, KEEP, 0),
    (r"[hH]", _ci("http") + r"[sS]?:\/\/[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]", None, KEEP, 0),
    (r"[wW]", _ci("www.") + r"(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}" + URL_PATH, None, KEEP, 0, URL_SPAN),
    (URL_LABEL, f"(?:{URL_LABEL}+\\.)+" + _alts(*map(_ci, ("com", "net", "org", "edu"))) + URL_PATH, None, KEEP, 0,
     URL_SPAN),
    (r"[a-zA-Z0-9<&]", "(?:" + _ci("&lt;") + r"|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@"
     r"(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:" + _ci("&gt;") + "|>)?",
     None, KEEP, 0),
    (r"@", r"@[a-zA-Z_][a-zA-Z_0-9]*", None, KEEP, 0),
    (r"#", f"#{WLET}+", None, KEEP, 0),
    (r"['\u0092\u2019&]", REDAUX, r"[^A-Za-z]", _right, 0),
    (r"[nN]", SREDAUX, None, _right, 0),
    (DIG, f"{DIG}{{1,2}}[\\-\\/]{DIG}{{1,2}}[\\-\\/]{DIG}{{2,4}}", None, KEEP, 0),
    (rf"[-+.:,\u00AD\u066B\u066C{_D}\u07C0-\u07C9]", rf"[\-+]?{NUM}", None, _no_soft_hyphen, 0),
    (r"[\u207A\u207B\u208A\u208B\u2070\u00B9\u00B2\u00B3\u2074-\u2079\u2080-\u2089]",
     r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)", None, KEEP, 0),
    (DIG, f"(?:{DIG}{{1,4}}[- \\u00A0])?{DIG}{{1,4}}(?:\\\\?\\/|\\u2044){DIG}{{1,4}}", None,
     lambda s: s.replace(" ", "\u00A0"), 0),
    (r"[\u00BC\u00BD\u00BE\u2153-\u215E]", r"[\u00BC\u00BD\u00BE\u2153-\u215E]", None,
     lambda s: _FRACTIONS.get(s, s), 0),
    (r"[-cCpPaAsS]", _alts("-" + _alts(*map(_ci, "RRB LRB RCB LCB RSB LSB".split())) + "-", _ci("C.D.s"),
                           _ci("pro-"), _ci("anti-"), _ci("S") + "(?:&|" + _ci("&amp;") + ")" + _ci("P-500"),
                           _ci("S") + "(?:&|" + _ci("&amp;") + ")" + _ci("Ls"), _ci("Cap") + APOS + "[nN]",
                           "[cC]" + APOS + _ci("est")), None, _amp, 0),
    (r"[A-Za-z0-9]", r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?\/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None, KEEP, 0),
    (r"[A-Z$#]", r"[A-Z]*\$|#", None, KEEP, 0),
    (r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]",
     r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", None,
     lambda s: _CURRENCY.get(s, s), 0),
    (r"[A-Za-z]", _alts(ACRO2, *_ACRO_SPECIAL, r"[A-Za-z]") + r"\.", f"{SPACENL}+{_ACRONYM_NEXT}{SPACENL}", KEEP, -2),
    (r"[cCfFpPnNaAbBoO]", ABBREV3, f"{SPACENL}?{DIG}", KEEP, 0),
    (r"[pPcC]", _alts("[pP][tT][eyEY]", _ci("co")) + r"\.", f"{SPACE}" + _alts(_ci("ltd"), _ci("lim")), KEEP, 0),
    (r"[A-Za-z]", ABBREV1, SENTEND, KEEP, -1),
    (r"[A-Za-z]", ABBREV1, r"[\s\S]{2}", KEEP, 0),
    (r"[A-Za-z]", ABBREV1, None, KEEP, -1),
    (r"[A-Za-z]", ABBREV4 + r"\.", None, KEEP, 0),
    (r"[A-Za-z]", ABBREV4, SPACE, KEEP, 0),
    (r"[A-Za-z]", ACRO, SPACENL, KEEP, 0),
    (r"['\u0092\u2019&]", APOS + "[0-9][0-9]", SPACENL, KEEP, 0),
    (f"[&{_L}{_WORD_EXTRA}{_D}]", f"{FNCHAR}+(?:\\.{FNCHAR}+)*\\." + _alts(*map(_ci, FILENAME_EXT)),
     f"(?:{SPACENL}|[.?!,])", KEEP, 0),
    (f"[&{_L}{_WORD_EXTRA}]", WORD + r"\.", INSENTP, _no_soft_hyphen, 0),
    (r"[(+0-9]", PHONE_A, None, lambda s: _parens(s.replace(" ", "\u00A0")), 0, r"[\s\S]{0,24}"),
    (r"[+0-9]", PHONE_B, None, KEEP, 0),
    (r'["&]', DBLQUOT, r"[A-Za-z0-9$]", _left, 0),
    (r'["&]', DBLQUOT, None, _right, 0),
    (r"\x7f", r"\x7f", None, DROP, 0),
    (r"[<&]", "<|" + _ci("&lt;"), None, lambda s: "<", 0),
    (r"[>&]", ">|" + _ci("&gt;"), None, lambda s: ">", 0),
    (r"[<>:;=]", r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]", r"[^A-Za-z0-9]", _parens, 0),
    (r"[\^x=~<>\-'(]", _alts(r"[\^x=~<>]\.\[\^[xX]=~<>\]", f"{ASIAN}_{ASIAN}",
                                f"\\({ASIAN}[_.]?{ASIAN}\\)"), None, _parens, 0),
    (r"[\[\](){}]", r"[\[\](){}]", None, lambda s: _BRACKETS[s], 0),
    (r"-", r"-+", None, lambda s: "--" if 3 <= len(s) <= 4 else s, 0),
    (r"[.\u0085\u2026]", r"\.{3,5}|[\u0085\u2026]", None, lambda s: "...", 0),
    (r"\.", r"(?:\.[ \u00A0]){2,4}\.", None, lambda s: "...", 0),
    (r"[@#_]", r"@+|#+|_+", None, KEEP, 0),
    (r"[*\\]", r"\*+|(?:\\\*){1,3}", None, KEEP, 0),
    (r"[,;:\u3001?!.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002=/]",
     r"[,;:\u3001]|[?!]+|[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002=/]", None, KEEP, 0),
    (r"[A-Za-z0-9]", HTHING + r"\.", INSENTP, _no_soft_hyphen, 0),
    (r"[A-Za-z0-9]", HTHING, None, _no_soft_hyphen, 0),
    (f"[{_L}{_D}]", THING + r"\.", INSENTP, KEEP, 0),
    (f"[{_L}{_D}]", THING, None, KEEP, 0),
    (r"[A-Z]", THINGA + r"\.", INSENTP, _amp, 0),
    (r"[A-Z]", THINGA, None, _amp, 0),
    (r"'", r"'", r"[A-Za-z][^ \t\n\r\u00A0]", _left, 0),
    (r"['\u0092\u2019&]", REDAUX, None, _right, 0),
    (r"['\u0092\u2019&`\u2018-\u201F\u0091-\u0094\u2039\u203A\u00AB\u00BB]", QUOTES, None, _right, 0),
    (r"[<>]", r"<<|>>", None, KEEP, 0),
    (MISCSYMBOL, MISCSYMBOL, None, KEEP, 0),
    (rf"[\x00 \t\u00A0\u2000-\u200A\u3000\u200B\u200E\u200F\uFEFF]",
     rf"\x00|{SPACE}+|[\u200B\u200E\u200F\uFEFF]", None, DROP, 0),
    (r"[\r\n\u2028\u2029\u000B\u000C\u0085]", NEWLINE, None, NL, 0),
    (r"&", _ci("&nbsp;"), None, DROP, 0),
]


class _Rule:
    __slots__ = ("first", "rx", "action", "pushback", "span")

    def __init__(self, first, main, trail, action, pushback, span=None):
        self.first = re.compile(first)
        self.rx = re.compile(f"(?P<m>{main})" + (f"(?:{trail})" if trail else ""))
        self.action, self.pushback = action, pushback
        # For patterns whose leftmost-first match can be shorter than the longest one: a regex
        # bounding the region a match can cover, searched exhaustively from its end.
        self.span = re.compile(span) if span else None

    def match(self, text: str, pos: int):
        m = self.rx.match(text, pos)
        if m is None or self.span is None:
            return m
        for end in range(self.span.match(text, pos).end(), m.end(), -1):
            longer = self.rx.fullmatch(text, pos, end)
            if longer is not None:
                return longer
        return m


_COMPILED: list[_Rule] | None = None
_BY_CHAR: dict[str, list[_Rule]] = {}


def _candidates(ch: str) -> list[_Rule]:
    global _COMPILED
    found = _BY_CHAR.get(ch)
    if found is None:
        if _COMPILED is None:
            _COMPILED = [_Rule(*r) for r in _RULES]
        found = [r for r in _COMPILED if r.first.match(ch)]
        _BY_CHAR[ch] = found
    return found


# Fast path: an ASCII word followed by a space, tab, newline or the end can only be lexed as
# itself (every other rule starting with a letter needs a non-space character after it),
# except for the assimilations that are split ("gonna" -> "gon" "na").
_FAST_WORD = re.compile(r"[A-Za-z]+(?=[ \t\n]|\Z)")
_SPLIT_WORDS = frozenset(("cannot", "gonna", "gotta", "lemme", "gimme", "wanna"))


def _lex_units(text: str) -> list[str | None]:
    tokens: list[str | None] = []
    pos, n = 0, len(text)
    while pos < n:
        ch = text[pos]
        if ch == " ":
            pos += 1
            continue
        if ch.isascii() and ch.isalpha():
            m = _FAST_WORD.match(text, pos)
            if m is not None and m.group().lower() not in _SPLIT_WORDS:
                tokens.append(m.group())
                pos = m.end()
                continue
        best, best_len, best_m = None, 0, None
        for rule in _candidates(ch):
            m = rule.match(text, pos)
            if m is not None and m.end() - pos > best_len:
                best, best_len, best_m = rule, m.end() - pos, m
        if best is None:  # untokenizable: deleted (the lexer's default "firstDelete")
            pos += 1
            continue
        end = best_m.end("m")
        pushback = best.pushback
        if pushback == -2:
            pushback = 1 if end - pos == 2 else -1
        if pushback > 0:
            end -= pushback
        if best.action is NL:
            tokens.append(None)
        elif best.action is not DROP:
            tokens.append(best.action(text[pos:end]))
        pos = end - 1 if pushback < 0 else end
    return tokens


def lex(text: str) -> list[str | None]:
    """Tokens that PTBLexer (CoreNLP 3.4.1, coco-caption options) produces for ``text``, before
    lowercasing; ``None`` marks a line break."""
    if all(ch <= "\uffff" for ch in text):
        return _lex_units(text)
    # The JVM lexer sees UTF-16 code units: run on surrogate halves, then re-join them.
    units = text.encode("utf-16-le", "surrogatepass")
    halves = "".join(chr(int.from_bytes(units[k:k + 2], "little")) for k in range(0, len(units), 2))
    return [t if t is None else t.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
            for t in _lex_units(halves)]

