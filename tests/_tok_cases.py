"""Shared inputs and comparison helpers of the tokenizer keyword tests (test_tokenizer_kwargs.py,
test_tokenizer_overflow_offsets.py): real multilingual sentences long enough to overflow, and output comparison
that ignores container types (tensors, arrays, tuples) but not the field set or the tensor kind."""

LONG = [
    "The bakery on the corner opens at six, and by seven the queue reaches the bus stop across the street.",
    "Le café était si fort que j'ai entendu mon cœur battre pendant toute la réunion du matin.",
    "Die Straßenbahn fährt alle zehn Minuten, außer sonntags, wenn sie nur jede halbe Stunde kommt.",
    "Утром над рекой висел густой туман, и рыбаки долго не решались выходить на лодках.",
    "今天早上我在公园里看见一只白色的猫，它在长椅下面睡觉，一动也不动。",
    "يفتح السوق القديم أبوابه كل صباح، ويبيع التجار الخضار والتوابل والأقمشة الملونة.",
    "मेरी दादी हर सुबह पौधों को पानी देती हैं और फिर चाय बनाती हैं।",
    "Pizza tonight? 🍕 or sushi? 🍣 Version 2.13.0 costs 1,234.89 USD at −5 °C <mask> ok.",
]
SHORT = ["Hello <mask>!", "週末は友達と山に登りました。", "  leading and trailing  ", "x", ""]
PAIRS = [(LONG[0], SHORT[1]), (SHORT[0], LONG[3]), (LONG[4], LONG[5])]
WORDS = [["Hello", "wor ld", " café", "<mask>", "今天"], ["a", "b"], ["Утром", "над", "рекой"]]


def plain(x):
    """Outputs as plain python (tensors / arrays -> lists, offset tuples -> lists) for comparison."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if hasattr(x, "keys"):
        return {k: plain(x[k]) for k in x.keys()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def same(got, want, what):
    assert plain(got) == plain(want), what
    if hasattr(want, "keys"):
        for k in want:
            assert type(got[k]).__name__ == type(want[k]).__name__, (what, k)
