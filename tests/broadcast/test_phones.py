"""The import's phone shortcut (services/phones._fast_br) agrees with phonenumbers itself."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from oraclewad.services import phones

ddd = st.integers(10, 99).map(str)
subscriber = st.text("0123456789", min_size=7, max_size=9)


@st.composite
def written(draw: st.DrawFn) -> str:
    national = draw(ddd) + draw(subscriber)
    prefix = draw(st.sampled_from(["", "55", "+55", "+55 ", "0"]))
    number = prefix + national
    style = draw(st.sampled_from(["plain", "dash", "brackets", "dots"]))
    if style == "dash":
        return f"{number[:-4]}-{number[-4:]}"
    if style == "brackets" and not prefix:
        return f"({number[:2]}) {number[2:-4]}-{number[-4:]}"
    if style == "dots":
        return ".".join(number[i:i + 3] for i in range(0, len(number), 3))
    return number


@settings(max_examples=3000, deadline=None)
@given(written())
@example("55500000000")     # 11 digits led by 55: phonenumbers reads a country code, not DDD 55
@example("+5590900443672")  # 90 is no area code but a carrier prefix phonenumbers strips
def test_the_shortcut_gives_what_phonenumbers_gives(text: str) -> None:
    assert phones.normalise(text) == phones._slow(text, phones.DEFAULT_REGION)
