"""Phone numbers as WhatsApp knows them: E.164 digits without '+', parsed by `phonenumbers`.

Brazilian mobiles got a ninth digit in 2012-2016; shops and old WhatsApp accounts still show
the 8-digit form (`55 11 8765-4321`), so a 10-digit national mobile number gets its 9 back
before validation. The same function keys the suppression list, so an opt-out that arrives
as a JID without the 9 matches the order's number with it.
"""

from __future__ import annotations

import phonenumbers

DEFAULT_REGION = "BR"


# A campaign import normalises 100,000 numbers, and phonenumbers.parse costs about 25 us each. For
# the shapes Brazilian lists use (digits with spaces, dashes, dots, brackets; optionally 55 or +55
# in front), validity and the ninth digit depend only on the national number's length and first
# digits (DDD, then 9 or the fixed-line digit), so phonenumbers' verdict for one number is
# remembered per (length, first 4 digits) and applied to the others. tests/broadcast/test_phones.py
# checks the shortcut against phonenumbers itself on random numbers of every shape.
_PLAIN = str.maketrans("", "", " -().\t/")
_VERDICTS: dict[tuple[int, str], str] = {}   # "invalid" | "same" | "ninth"
# ANATEL's area codes (DDD).
_DDDS = frozenset(str(d) for d in (
    11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 24, 27, 28, 31, 32, 33, 34, 35, 37, 38, 41, 42, 43, 44, 45,
    46, 47, 48, 49, 51, 53, 54, 55, 61, 62, 63, 64, 65, 66, 67, 68, 69, 71, 73, 74, 75, 77, 79, 81, 82, 83,
    84, 85, 86, 87, 88, 89, 91, 92, 93, 94, 95, 96, 97, 98, 99))


def _fast_br(text: str, region: str) -> str | bool | None:
    """The normalised number, None (impossible), or False: not a shape this shortcut knows."""
    if region != DEFAULT_REGION:
        return False
    plain = text.translate(_PLAIN)
    plus = plain.startswith("+")
    digits = plain[1:] if plus else plain
    if not digits.isascii() or not digits.isdigit():
        return False
    if len(digits) in (12, 13) and digits.startswith("55"):
        national = digits[2:]
    elif not plus and len(digits) in (10, 11) and not digits.startswith("55"):
        # (Digits led by 55 without +: DDD 55, or a country code phonenumbers may strip when the
        # whole is not a valid national number; its verdict then depends on more than the key.)
        national = digits
    elif not plus and len(digits) in (11, 12) and digits[0] == "0":
        # The trunk prefix (`0 11 98765-4321`): phonenumbers strips the 0 and reads the rest as the
        # national number (a carrier code after it needs 12+ more digits: those go the slow way).
        national = digits[1:]
    else:
        return False
    if national[:2] not in _DDDS:
        # Not an area code: phonenumbers may then read a national or carrier prefix (0, 90...)
        # and its verdict depends on more than the key.
        return False
    key = (len(national), national[:4])
    verdict = _VERDICTS.get(key)
    if verdict is None:
        found = _slow("+55" + national, region)
        verdict = ("invalid" if found is None else "same" if found == "55" + national
                   else "ninth" if found == "55" + national[:2] + "9" + national[2:] else "")
        if not verdict:
            return False
        _VERDICTS[key] = verdict
    if verdict == "invalid":
        return None
    return "55" + national if verdict == "same" else "55" + national[:2] + "9" + national[2:]


def normalise(raw: str, region: str = DEFAULT_REGION) -> str | None:
    """'5511987654321' for any way of writing a valid number, None for an impossible one."""
    text = raw.strip()
    if not text or len(text) > 40:
        return None
    fast = _fast_br(text, region) if "@" not in text else False
    return _slow(text, region) if fast is False else fast


def _slow(raw: str, region: str) -> str | None:
    text = raw.strip()
    if not text or len(text) > 40:
        return None
    if "@" in text:  # a JID: 5511987654321@s.whatsapp.net (participant suffixes ':12' too)
        text = text.split("@", 1)[0].split(":", 1)[0]
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits:
        return None
    # Bare digits that already start with the country code (as Evolution and many shops write them).
    candidates = [text]
    if not text.startswith("+") and digits.startswith("55") and len(digits) in (12, 13):
        candidates.insert(0, "+" + digits)
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        number = _ninth_digit(number)
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")
    return None


def _ninth_digit(number: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber:
    national = str(number.national_number)
    if number.country_code == 55 and len(national) == 10 and national[2] in "6789":
        fixed = phonenumbers.PhoneNumber(country_code=55,
                                         national_number=int(national[:2] + "9" + national[2:]))
        if phonenumbers.is_valid_number(fixed):
            return fixed
    return number


def jid_phone(remote_jid: str | None, alt: str | None = None) -> str | None:
    """The phone behind a message key: the @s.whatsapp.net JID, wherever it is (LID addressing puts
    `<id>@lid` in remoteJid and the phone JID in remoteJidAlt). Groups and LIDs alone give None."""
    for jid in (remote_jid, alt):
        if isinstance(jid, str) and jid.endswith("@s.whatsapp.net"):
            return normalise(jid)
    return None
