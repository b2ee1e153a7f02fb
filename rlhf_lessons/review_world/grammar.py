"""A made-up world of short movie reviews: the grammar, its corpus, its tokenizer and prompts.

Alignment methods can only be compared honestly where the true reward is known. The DPO paper
(Rafailov et al. 2023, arXiv 2305.18290, section 6.1 and appendix C.1) builds such a world from
IMDb: a GPT-2 fine-tuned on movie reviews is the reference policy, prompts are review prefixes
of 2-8 tokens, a sentiment classifier plays the ground-truth reward, and every method is judged
by the expected true reward it reaches against the sequence-level KL(pi || pi_ref) it pays.

We rebuild that world at laptop scale, offline and from scratch. Instead of IMDb, a small
grammar of our own writes the reviews: one or two clauses about a subject (the acting, the plot,
the soundtrack, ...) with positive, negative, neutral and mixed sentiment, intensifiers
("truly superb"), negation ("not bad at all", "never boring") and contrast ("the acting was
superb , but the plot dragged ."). Its sentiment words are taken from VADER's lexicon, so the
ground-truth reward of :mod:`rlhf_lessons.review_world.true_reward` can score them.

Texts are lower-case, one space between tokens, punctuation as separate tokens (``","``,
``"."``, ``"!"``): that canonical form makes the word-level tokenizer exact,
``decode(encode(s)) == s``. The corpus, the vocabulary and the prompts are deterministic
functions of their seeds.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Collection
from dataclasses import dataclass

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# ---------------------------------------------------------------------------------------------
# The grammar. Upper-case symbols are non-terminals, everything else is a word (a terminal).
# Each rule lists its alternatives; an alternative may carry a weight as ``(text, weight)``
# (default 1). "SG"/"PL" keep subject and verb in agreement.
# ---------------------------------------------------------------------------------------------
# fmt: off
GRAMMAR: dict[str, list] = {
    "REVIEW": [("POSITIVE", 30), ("NEGATIVE", 30), ("NEUTRAL", 12), ("MIXED", 28)],
    # ---- sentence types
    "POSITIVE": [
        ("OPENER POS END_STRONG", 4),
        ("OPENER POS , and POS END_STRONG", 2),
        ("OPENER POS , and ALSO_POS END_STRONG", 1),
        ("NEU , and POS END_STRONG", 1),
        ("POS . POS_VERDICT END_STRONG", 1),
    ],
    "NEGATIVE": [
        ("OPENER NEG END_STRONG", 4),
        ("OPENER NEG , and NEG END_STRONG", 2),
        ("OPENER NEG , and ALSO_NEG END_STRONG", 1),
        ("NEU , and NEG END_STRONG", 1),
        ("NEG . NEG_VERDICT END_STRONG", 1),
    ],
    "NEUTRAL": [("NEU .", 3), ("NEU , and NEU .", 2), ("OPENER NEU .", 1)],
    "MIXED": [
        "POS , but NEG .",
        "NEG , but POS .",
        "OPENER POS , but NEG .",
        "OPENER NEG , but POS .",
        "although POS , NEG .",
        "although NEG , POS .",
        "POS , yet NEG .",
        "NEG , yet POS .",
        "POS , while NEG .",
        "NEG , while POS .",
        "NEU , but NEG .",
        "NEU , but POS .",
    ],
    "OPENER": [("", 8), "overall ,", "frankly ,", "in the end ,", "all in all ,", "in short ,"],
    "END_STRONG": [(".", 4), "!"],
    # ---- positive clauses
    "POS": [
        ("the SUBJ_SG BE_SG POS_PRED", 5),
        ("the SUBJ_PL BE_PL POS_PRED", 3),
        ("the PERSON BE_SG INTENS_OPT PERSON_POS_ADJ", 2),
        ("i ADV_OPT POS_VERB the SUBJ", 3),
        ("i ADV_OPT POS_VERB this FILM", 2),
        ("this FILM BE_SG a POS_NOUN", 2),
        ("this FILM BE_SG a INTENS_OPT POS_ADJ FILM", 2),
        ("it BE_SG INTENS_OPT POS_ADJ", 2),
        ("what a POS_ADJ FILM", 1),
        ("the SUBJ_SG POS_VERB3 POS_ADV_END", 2),
        ("the PERSON POS_VERB3 POS_ADV_END", 1),
        ("the SUBJ POS_VERB_PAST", 2),
        ("the SUBJ_SG made me POS_REACTION", 1),
        ("the SUBJ_PL made me POS_REACTION", 1),
        ("the SUBJ_SG BE_SG NEG_NOT", 2),
        ("the SUBJ_PL BE_PL NEG_NOT", 1),
        ("it BE_SG NEG_NOT", 1),
    ],
    "ALSO_POS": [
        "the SUBJ_SG BE_SG just as POS_ADJ",
        "the SUBJ_PL BE_PL even better",
        "the SUBJ_SG BE_SG even better",
        "i would recommend it to anyone",
        "i would happily watch it again",
    ],
    "POS_VERDICT": [
        "i would recommend it to anyone", "i would happily watch it again",
        "it was worth every minute", "what a pleasure", "a true masterpiece", "highly recommended",
        "what a joy", "i loved every minute of it",
    ],
    "POS_PRED": [
        ("POS_ADJ", 4),
        ("INTENS POS_ADJ", 4),
        ("POS_ADJ and POS_ADJ", 1),
        ("a POS_NOUN", 1),
        ("the best part", 1),
    ],
    "NEG_NOT": [
        "not NEG_ADJ at all",
        "never NEG_ADJ",
        "not NEG_ADJ",
        "not as NEG_ADJ as i expected",
        "not NEG_ADJ in the least",
    ],
    # ---- negative clauses
    "NEG": [
        ("the SUBJ_SG BE_SG NEG_PRED", 5),
        ("the SUBJ_PL BE_PL NEG_PRED", 3),
        ("the PERSON BE_SG INTENS_OPT PERSON_NEG_ADJ", 2),
        ("i ADV_OPT NEG_VERB the SUBJ", 3),
        ("i ADV_OPT NEG_VERB this FILM", 2),
        ("this FILM BE_SG a NEG_NOUN", 2),
        ("this FILM BE_SG a INTENS_OPT NEG_ADJ FILM", 2),
        ("it BE_SG INTENS_OPT NEG_ADJ", 2),
        ("what a NEG_NOUN", 1),
        ("the SUBJ_SG NEG_VERB3 NEG_ADV_END", 2),
        ("the PERSON NEG_VERB3 NEG_ADV_END", 1),
        ("the SUBJ NEG_VERB_PAST", 2),
        ("the SUBJ_SG made me NEG_REACTION", 1),
        ("the SUBJ_PL made me NEG_REACTION", 1),
        ("the SUBJ_SG BE_SG POS_NOT", 2),
        ("the SUBJ_PL BE_PL POS_NOT", 1),
        ("i did not POS_VERB_BASE the SUBJ", 2),
        ("i did not POS_VERB_BASE this FILM", 1),
    ],
    "ALSO_NEG": [
        "the SUBJ_SG BE_SG just as NEG_ADJ",
        "the SUBJ_PL BE_PL even worse",
        "the SUBJ_SG BE_SG even worse",
        "i would not recommend it to anyone",
        "i want those two hours back",
    ],
    "NEG_VERDICT": [
        "avoid this FILM",
        "what a waste of time",
        "i regret watching it",
        "a total disaster",
        "what a disappointment",
        "i was bored the whole time",
        "i hated every minute of it",
    ],
    "NEG_PRED": [
        ("NEG_ADJ", 4),
        ("INTENS NEG_ADJ", 4),
        ("NEG_ADJ and NEG_ADJ", 1),
        ("a NEG_NOUN", 1),
        ("the worst part", 1),
    ],
    "POS_NOT": [
        "not POS_ADJ",
        "not very POS_ADJ",
        "not POS_ADJ at all",
        "never POS_ADJ",
        "not as POS_ADJ as i expected",
    ],
    # ---- neutral clauses
    "NEU": [
        "it BE_SG a GENRE about TOPIC",
        "this FILM BE_SG about TOPIC",
        "the FILM runs about NUMBER MINUTES",
        "the story takes place in PLACE",
        "the FILM was shot in PLACE",
        "i watched it with my RELATIVE on a DAY",
        "i saw it at home on a DAY",
        "i saw it in the theater with my RELATIVE",
        "the director also wrote the script",
        "the FILM came out in YEAR",
        "the FILM BE_SG mostly in black and white",
        "the SUBJ_SG BE_SG NEU_ADJ",
        "the SUBJ_PL BE_PL NEU_ADJ",
        "it BE_SG based on a book",
        "it BE_SG the ORDINAL FILM by this director",
        "the cast includes a few new faces",
        "most of it takes place at night",
    ],
    # ---- words
    "SUBJ": [("SUBJ_SG", 3), ("SUBJ_PL", 2)],
    "SUBJ_SG": [
        "acting", "plot", "story", "script", "screenplay", "soundtrack", "score", "music",
        "dialogue", "pacing", "ending", "cinematography", "direction", "editing", "writing",
        "premise", "climax", "opening scene", "final act", "first half", "second half",
        "camera work", "set design", "sound design", "lighting", "casting", "cast",
        "lead performance", "production design", "main character",
    ],
    "SUBJ_PL": [
        "visuals", "characters", "performances", "visual effects", "costumes", "gags",
        "action scenes", "songs", "sets", "side characters", "twists", "landscapes",
        "chase scenes", "flashbacks", "dance numbers", "car chases",
    ],
    "PERSON": ["director", "lead actor", "lead actress", "young star", "writer", "composer"],
    "FILM": [
        ("movie", 4), ("film", 4), "picture", "sequel", "remake", "drama", "documentary",
        "adaptation", "musical", "mystery", "western", "animated film", "period piece",
    ],
    "BE_SG": [("was", 3), "is"],
    "BE_PL": [("were", 3), "are"],
    "INTENS": [
        "very", "really", "extremely", "incredibly", "genuinely", "absolutely", "quite", "so",
        "totally", "remarkably", "thoroughly", "utterly", "deeply", "especially", "somewhat",
        "slightly", "a little",
    ],
    "INTENS_OPT": [("", 3), "INTENS"],
    "ADV_OPT": [("", 4), "really", "genuinely", "absolutely", "completely", "just"],
    "POS_ADV_END": [("", 3), "beautifully", "brilliantly", "perfectly", "wonderfully"],
    "NEG_ADV_END": [("", 3), "badly", "terribly", "horribly"],
    "PERSON_POS_ADJ": ["POS_ADJ", "talented", "brilliant", "charming", "wonderful", "superb"],
    "PERSON_NEG_ADJ": ["NEG_ADJ", "terrible", "awful", "weak", "lazy", "annoying"],
    "POS_ADJ": [
        "great", "good", "excellent", "superb", "brilliant", "wonderful", "amazing", "fantastic",
        "beautiful", "lovely", "charming", "delightful", "enjoyable", "fun", "funny", "clever",
        "smart", "powerful", "impressive", "perfect", "strong", "fresh", "engaging", "thrilling",
        "exciting", "gorgeous", "stunning", "hilarious", "heartfelt", "inspired", "outstanding",
        "terrific", "magnificent", "marvelous", "nice", "pleasant", "entertaining", "compelling",
        "sweet", "elegant", "remarkable", "original", "joyful", "fascinating", "interesting",
        "lively", "flawless", "glorious", "breathtaking", "amusing", "ambitious", "honest",
        "sincere", "graceful", "solid",
    ],
    "NEG_ADJ": [
        "bad", "terrible", "awful", "horrible", "boring", "dull", "weak", "poor", "stupid", "dumb",
        "silly", "lame", "disappointing", "painful", "messy", "confusing", "ridiculous",
        "pathetic", "annoying", "ugly", "awkward", "dreadful", "irritating", "lazy", "miserable",
        "tired", "exhausting", "embarrassing", "dreary", "flawed", "fake", "offensive",
        "insulting", "worthless",
    ],
    "POS_NOUN": [
        "masterpiece", "triumph", "treat", "joy", "pleasure", "delight", "success", "real treat",
        "true masterpiece", "pleasant surprise", "huge success",
    ],
    "NEG_NOUN": [
        "mess", "disaster", "disappointment", "failure", "waste of time", "bore", "total mess",
        "complete disaster", "huge disappointment", "real bore", "waste of money",
    ],
    "POS_VERB": ["loved", "liked", "enjoyed", "adored", "admired"],
    "POS_VERB_BASE": ["love", "like", "enjoy", "admire"],
    "NEG_VERB": ["hated", "disliked", "despised"],
    "POS_VERB3": [
        "succeeds", "excels", "delights", "impresses", "amazes", "charms", "entertains", "thrills",
        "inspires", "wins me over",
    ],
    "NEG_VERB3": [
        "fails", "drags", "bores", "disappoints", "misses the mark", "annoys", "irritates",
        "stinks", "fails miserably",
    ],
    "POS_VERB_PAST": [
        "succeeded", "excelled", "delighted me", "impressed me", "amazed me", "charmed me",
        "entertained me", "thrilled me", "won me over",
    ],
    "NEG_VERB_PAST": [
        "dragged", "dragged on", "failed", "disappointed me", "bored me", "annoyed me",
        "irritated me", "stank", "failed miserably",
    ],
    "POS_REACTION": ["laugh", "smile", "happy", "laugh out loud", "want to see it again"],
    "NEG_REACTION": ["sad", "cry", "angry", "tired", "bored", "want to leave"],
    "NEU_ADJ": [
        "long", "short", "simple", "quiet", "loud", "familiar", "typical", "ordinary", "unusual",
        "different", "old fashioned", "slow", "fast", "dark", "colorful", "mostly practical",
        "in english", "in french", "about average",
    ],
    "GENRE": ["FILM", "heist story", "family film", "road movie", "spy story", "sports film"],
    "TOPIC": [
        "a family", "two brothers", "two sisters", "a detective", "a small town", "a road trip",
        "a young woman", "an old man", "an old house", "a teacher", "a journey", "a band",
        "a boxer", "a farmer", "a pilot", "a chef", "a marriage", "a long summer", "an island",
        "a city at night", "a robot", "three roommates",
    ],
    "PLACE": [
        "paris", "london", "new york", "rome", "tokyo", "a small town", "the desert",
        "the mountains", "a big city", "texas", "scotland", "the suburbs",
    ],
    "NUMBER": ["two", "three", "ninety", "a hundred", "one hundred and twenty"],
    "MINUTES": ["minutes", "hours"],
    "RELATIVE": [
        "wife", "husband", "kids", "parents", "brother", "sister", "family", "girlfriend",
        "boyfriend", "dad", "mom",
    ],
    "DAY": ["monday", "friday", "saturday", "sunday", "rainy day", "long flight"],
    "YEAR": [
        "1984", "1999", "2003", "2010", "2015", "2019", "2022", "the eighties", "the nineties",
    ],
    "ORDINAL": ["first", "second", "third", "fourth", "latest", "last"],
}
# fmt: on

_NONTERMINAL = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _alternatives(symbol: str) -> tuple[list[list[str]], list[float]]:
    options, weights = [], []
    for alt in GRAMMAR[symbol]:
        text, weight = alt if isinstance(alt, tuple) else (alt, 1.0)
        options.append(text.split())
        weights.append(float(weight))
    return options, weights


@functools.cache
def _compiled() -> dict[str, tuple[list[list[str]], list[float]]]:
    return {symbol: _alternatives(symbol) for symbol in GRAMMAR}


def _expand(symbol: str, rng: random.Random, out: list[str]) -> None:
    options, weights = _compiled()[symbol]
    for token in rng.choices(options, weights)[0]:
        if _NONTERMINAL.match(token):
            _expand(token, rng, out)
        else:
            out.append(token)


_REPEAT = re.compile(r"\b(\w+) and \1\b")


def sample_review(rng: random.Random) -> str:
    """One review sentence drawn from the grammar with ``rng``, in canonical form.

    Draws that repeat a word around "and" ("poor and poor") are redrawn."""
    while True:
        out: list[str] = []
        _expand("REVIEW", rng, out)
        text = " ".join(out)
        if not _REPEAT.search(text):
            return text


def entropy_per_token(n: int = 20_000, seed: int = 0) -> float:
    """Monte-Carlo estimate of the grammar's entropy in nats per token (words and the final
    ``<eos>``), from ``n`` derivations: mean of -log p(derivation) / mean tokens per sentence.

    A derivation fixes its sentence, so this is an upper bound on the sentence entropy (a
    sentence with two derivations is more likely than either). No language model can have a
    lower expected loss on the corpus than the sentence entropy: it is the floor that a
    trained model's validation loss is compared with (1.445 nats; redrawn repeats are ignored
    here).
    """
    rng = random.Random(f"review-entropy-{seed}")
    compiled = _compiled()

    def expand(symbol: str) -> tuple[float, int]:
        options, weights = compiled[symbol]
        i = rng.choices(range(len(options)), weights)[0]
        logp, count = math.log(weights[i] / sum(weights)), 0
        for token in options[i]:
            if _NONTERMINAL.match(token):
                sub_logp, sub_count = expand(token)
                logp, count = logp + sub_logp, count + sub_count
            else:
                count += len(token.split())
        return logp, count

    total_nll, total_tokens = 0.0, 0
    for _ in range(n):
        logp, count = expand("REVIEW")
        total_nll -= logp
        total_tokens += count + 1  # + <eos>
    return total_nll / total_tokens


def is_grammatical(text: str) -> bool:
    """True when the grammar can produce ``text`` (in canonical form: lower-case, one space
    between tokens), i.e. it is a well-formed review of this world.

    A fluency check that needs no model: the reference policy's samples mostly pass it, and a
    policy that games the reward with broken text ("great great great !") fails it. The grammar
    has no recursion, so a memoised "which positions can this symbol end at" parse is exact.
    """
    tokens = text.split()
    compiled = _compiled()

    @functools.cache
    def ends(symbol: str, start: int) -> frozenset[int]:
        out: set[int] = set()
        for option, _ in zip(*compiled[symbol], strict=True):
            positions = {start}
            for token in option:
                if _NONTERMINAL.match(token):
                    positions = {e for p in positions for e in ends(token, p)}
                else:
                    positions = {p + 1 for p in positions if p < len(tokens) and tokens[p] == token}
                if not positions:
                    break
            out |= positions
        return frozenset(out)

    return len(tokens) in ends("REVIEW", 0)


def grammar_words() -> set[str]:
    """Every terminal (word or punctuation mark) the grammar can produce."""
    words = set()
    for options, _ in _compiled().values():
        for option in options:
            words.update(t for t in option if not _NONTERMINAL.match(t))
    return words


def _check_grammar() -> None:
    for symbol, (options, _) in _compiled().items():
        for option in options:
            for t in option:
                if _NONTERMINAL.match(t) and t not in GRAMMAR:
                    raise KeyError(f"grammar rule {symbol} uses undefined symbol {t}")


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus is drawn. Part of the SFT model's cache key."""

    n_train: int = 40_000
    n_val: int = 2_000
    seed: int = 0


@dataclass(frozen=True)
class Corpus:
    """Distinct review sentences: ``train`` and ``val`` never share a sentence."""

    train: tuple[str, ...]
    val: tuple[str, ...]


@functools.cache
def build_corpus(config: CorpusConfig = CorpusConfig()) -> Corpus:
    """Draw ``n_train + n_val`` distinct sentences from the grammar with ``config.seed``.

    Same config, same corpus (cached per process). The validation sentences are the last
    ``n_val`` of the draw, so they are unseen in training.
    """
    if config.n_train < 1 or config.n_val < 1:
        raise ValueError(f"CorpusConfig needs n_train >= 1 and n_val >= 1, got {config}")
    _check_grammar()
    rng = random.Random(f"review-corpus-{config.seed}")
    seen: dict[str, None] = {}
    need = config.n_train + config.n_val
    attempts = 0
    while len(seen) < need:
        seen.setdefault(sample_review(rng))
        attempts += 1
        if attempts > 20 * need:
            raise RuntimeError(f"the grammar yields fewer than {need} distinct sentences")
    sentences = list(seen)
    return Corpus(tuple(sentences[: config.n_train]), tuple(sentences[config.n_train :]))


def prompts(
    n: int,
    seed: int = 0,
    min_tokens: int = 2,
    max_tokens: int = 8,
    config: CorpusConfig = CorpusConfig(),
    exclude: Collection[str] = (),
    distinct: bool = False,
) -> list[str]:
    """``n`` review prefixes of ``min_tokens``..``max_tokens`` tokens (uniform length), the
    starts of held-out sentences: sentences drawn from the grammar that are not in the
    training corpus of ``config``, as in the DPO paper's IMDb prefixes of 2-8 tokens.

    Every prefix leaves at least one token of its sentence to complete. Deterministic in
    ``seed``; different seeds give different draws. Returns a list of ``n`` strings in
    canonical form (tokens separated by single spaces) **ending in one space**, so that plain
    string concatenation ``prompt + completion`` is the review: TRL's trainers build their
    sequences that way, and without the space the prompt's last word and the completion's
    first would fuse into one unknown word. The tokenizer ignores the space.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(
            f"need 1 <= min_tokens <= max_tokens, got min_tokens={min_tokens}, "
            f"max_tokens={max_tokens}"
        )
    train = set(build_corpus(config).train)
    rng = random.Random(f"review-prompts-{seed}")
    skip = set(exclude)
    out: list[str] = []
    for _ in range(1000 * n + 10_000):
        if len(out) == n:
            return out
        sentence = sample_review(rng)
        tokens = sentence.split()
        if sentence in train or len(tokens) <= min_tokens:
            continue
        k = rng.randint(min_tokens, min(max_tokens, len(tokens) - 1))
        prefix = " ".join(tokens[:k]) + " "
        if prefix in skip:
            continue
        out.append(prefix)
        if distinct:
            skip.add(prefix)
    raise ValueError(
        f"could not draw {n} prompts (distinct={distinct}, {len(skip)} excluded): the grammar "
        "has too few prefixes of this length; ask for fewer or allow repeats"
    )


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------
def vocabulary() -> list[str]:
    """The word-level vocabulary: the four special tokens (ids 0-3: pad, bos, eos, unk), then
    every word of the grammar in sorted order. A word is one whitespace-separated token."""
    words = set()
    for terminal in grammar_words():
        words.update(terminal.split())
    return [*SPECIAL_TOKENS, *sorted(words)]


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over :func:`vocabulary`.

    Lower-cases its input and splits on whitespace and punctuation (``"good."`` -> ``good``,
    ``.``); unknown words map to ``<unk>``. Decoding joins tokens with single spaces, so
    ``decode(encode(s)) == s`` for every canonical sentence. It adds no special tokens by
    itself (``add_special_tokens`` does nothing): training code puts ``<bos>``/``<eos>`` where
    it wants them, and :mod:`rlhf_lessons.lm` and TRL tokenise prompts without them anyway.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )
