"""Four prompt -> completion records in the tiny review vocabulary: the SFT data that the SPIN
and pipeline tests share (SPIN's "real" answers, the SFT stage's training set)."""

DATA = [
    {"prompt": "the movie was ", "completion": "very good"},
    {"prompt": "the plot is ", "completion": "great and good"},
    {"prompt": "the acting was ", "completion": "not bad"},
    {"prompt": "a film ", "completion": "was great"},
]
