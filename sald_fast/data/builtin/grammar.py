"""The built-in corpus' English grammar: sentence templates over the lexicon, each sentence with
its gloss order (topic first, wh-word last, time first) and kind (statement, wh-question,
yes/no question). :func:`sentence_pool` lists every sentence it makes."""

from __future__ import annotations

import re
from functools import lru_cache

from .lexicon import VOCABULARY


_PRONOUNS = (("i", "am", "do", False), ("you", "are", "do", False), ("he", "is", "does", True),
             ("she", "is", "does", True), ("we", "are", "do", False), ("they", "are", "do", False))
_POSSESSIVES = ("my", "your", "our")
_PEOPLE = ("teacher", "student", "friend", "mother", "father", "doctor", "baby", "man", "woman", "child",
           "family", "brother", "sister")
_ANIMALS = ("dog", "cat", "bird", "horse", "fish")
_PLACES = ("library", "school", "house", "store", "hospital", "restaurant", "bathroom", "church", "park", "office",
           "city")
_THINGS = ("book", "car", "computer", "phone", "ball", "movie", "game", "table", "shoes", "shirt", "door", "window")
_MASS = ("food", "bread", "apple", "pizza", "water", "coffee", "milk", "tea", "money", "music")
_FOOD = ("food", "bread", "apple", "pizza")
_DRINKS = ("water", "coffee", "milk", "tea")
_ADJ_ANIMATE = ("happy", "sad", "tired", "hungry", "big", "small", "good", "bad", "new", "old", "beautiful", "fast",
                "slow", "sick", "angry", "busy", "nice")
_ADJ_THING = ("big", "small", "new", "old", "good", "bad", "hot", "cold", "red", "blue", "green", "beautiful", "nice",
              "easy", "hard")
_VERB_FORMS = {  # base: (3rd person singular, past)
    "like": ("likes", "liked"), "want": ("wants", "wanted"), "need": ("needs", "needed"), "have": ("has", "had"),
    "see": ("sees", "saw"), "eat": ("eats", "ate"), "drink": ("drinks", "drank"), "read": ("reads", "read"),
    "buy": ("buys", "bought"), "love": ("loves", "loved"), "help": ("helps", "helped"), "know": ("knows", "knew"),
    "make": ("makes", "made"), "play": ("plays", "played"), "find": ("finds", "found"), "drive": ("drives", "drove"),
    "cook": ("cooks", "cooked"), "write": ("writes", "wrote"), "learn": ("learns", "learned"),
    "go": ("goes", "went"), "come": ("comes", "came"), "sleep": ("sleeps", "slept"), "work": ("works", "worked"),
    "run": ("runs", "ran"), "walk": ("walks", "walked"), "sit": ("sits", "sat"), "swim": ("swims", "swam"),
    "dance": ("dances", "danced"), "sing": ("sings", "sang"), "study": ("studies", "studied"),
    "wait": ("waits", "waited"), "cry": ("cries", "cried"), "laugh": ("laughs", "laughed"),
}
_VERBS_ANY = ("like", "want", "need", "have", "see", "buy", "find")
_VERBS_OBJECTS = {"eat": _FOOD, "drink": _DRINKS, "cook": _FOOD, "read": ("book",), "write": ("book",),
                  "drive": ("car",), "play": ("game", "music", "ball"), "make": ("food", "table"), "learn": ("music",)}
_VERBS_PERSON = ("love", "help", "know", "see", "like", "find")
_VERBS_INTRANSITIVE = ("go", "come", "sleep", "work", "run", "walk", "sit", "swim", "dance", "sing", "study", "wait",
                       "cry", "laugh")
_FIXED = (("hello", ["hello"]), ("thank you", ["thank_you"]), ("yes", ["yes"]), ("no", ["no"]),
          ("please", ["please"]), ("sorry", ["sorry"]), ("hello my friend", ["hello", "my", "friend"]),
          ("please help me", ["please", "help", "i"]), ("i am sorry", ["i", "sorry"]),
          ("no, thank you", ["no", "thank_you"]), ("yes, please", ["yes", "please"]),
          ("good morning", ["good", "morning"]), ("good night", ["good", "night"]),
          ("see you tomorrow", ["see", "you", "tomorrow"]), ("thank you, my friend", ["thank_you", "my", "friend"]),
          ("i finish now", ["now", "i", "finish"]), ("we finish today", ["today", "we", "finish"]))
# sentence kinds (head posture): statement, wh-question, yes/no question
_STATEMENT, _WH, _YES_NO = 0, 1, 2


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _obj(word: str) -> str:
    """English noun phrase of an object: mass nouns bare, count nouns with 'the'."""
    return word if word in _MASS else f"the {word}"


def _verb(base: str, third: bool) -> str:
    return _VERB_FORMS[base][0] if third else base


def _templates() -> list[tuple[str, float, list[tuple[str, list[str], int]]]]:
    """(template name, weight, [(text, glosses, kind)]) for every sentence template."""
    objects = {v: _THINGS + _MASS for v in _VERBS_ANY} | dict(_VERBS_OBJECTS)
    T: list[tuple[str, float, list[tuple[str, list[str], int]]]] = []
    T.append(("noun is adjective", 2.0,
              [(f"the {n} is {a}", [n, a], _STATEMENT) for n in _PEOPLE + _ANIMALS for a in _ADJ_ANIMATE]
              + [(f"the {n} is {a}", [n, a], _STATEMENT) for n in _THINGS for a in _ADJ_THING]))
    T.append(("pronoun is adjective", 1.0,
              [(f"{p} {be} {a}", [p, a], _STATEMENT) for p, be, _, _ in _PRONOUNS for a in _ADJ_ANIMATE]))
    T.append(("where", 1.0,
              [(f"where is the {n}?", [n, "where"], _WH) for n in _PLACES + _THINGS]
              + [(f"where is {q} {n}?", [q, n, "where"], _WH) for q in _POSSESSIVES for n in _PEOPLE + _THINGS]))
    T.append(("subject verb object", 1.5,
              [(f"{p} {_verb(v, third)} {_obj(o)}", [o, p, v], _STATEMENT)
               for p, _, _, third in _PRONOUNS for v, objs in objects.items() for o in objs]))
    T.append(("subject verb person", 0.5,
              [(f"{p} {_verb(v, third)} {q} {n}", [q, n, p, v], _STATEMENT)
               for p, _, _, third in _PRONOUNS for v in _VERBS_PERSON for q in _POSSESSIVES for n in _PEOPLE]))
    T.append(("i verb my adjective person", 0.4,
              [(f"i {v} {q} {a} {n}", [q, a, n, v], _STATEMENT) for v in _VERBS_PERSON for q in _POSSESSIVES
               for a in ("new", "old", "happy", "sick", "nice", "tired") for n in _PEOPLE]))
    time_rows = []
    for p, _, _, third in _PRONOUNS:
        for v in _VERBS_INTRANSITIVE:
            form, past = _verb(v, third), _VERB_FORMS[v][1]
            time_rows += [(f"{p} {form} today", ["today", p, v], _STATEMENT),
                          (f"{p} {form} now", ["now", p, v], _STATEMENT),
                          (f"{p} {form} in the morning", ["morning", p, v], _STATEMENT),
                          (f"{p} {form} at night", ["night", p, v], _STATEMENT),
                          (f"{p} will {v} tomorrow", ["tomorrow", p, v], _STATEMENT),
                          (f"{p} {past} yesterday", ["yesterday", p, v], _STATEMENT)]
    T.append(("time subject verb", 1.0, time_rows))
    wh = []
    for n in _PEOPLE:
        for v in _VERBS_ANY:
            wh.append((f"what does the {n} {v}?", [n, v, "what"], _WH))
        for v in _VERBS_INTRANSITIVE:
            wh.append((f"when does the {n} {v}?", [n, v, "when"], _WH))
            wh.append((f"where does the {n} {v}?", [n, v, "where"], _WH))
        for q in _POSSESSIVES:
            wh.append((f"how is {q} {n}?", [q, n, "how"], _WH))
    for n in _PEOPLE + _ANIMALS:
        for a in _ADJ_ANIMATE:
            wh.append((f"why is the {n} {a}?", [n, a, "why"], _WH))
    for a in _ADJ_ANIMATE:
        wh.append((f"who is {a}?", [a, "who"], _WH))
    for v in _VERBS_INTRANSITIVE:
        wh.append((f"who can {v}?", [v, "can", "who"], _WH))
    T.append(("wh-question", 1.2, wh))
    yn = [(f"do you {v} {_obj(o)}?", [o, "you", v], _YES_NO) for v, objs in objects.items() for o in objs]
    yn += [(f"is the {n} {a}?", [n, a], _YES_NO) for n in _PEOPLE + _ANIMALS for a in _ADJ_ANIMATE]
    yn += [(f"can you {v}?", ["you", v, "can"], _YES_NO) for v in _VERBS_INTRANSITIVE]
    T.append(("yes/no question", 1.0, yn))
    T.append(("negation", 0.4,
              [(f"{p} {do} not {v} {_obj(o)}", [o, p, v, "not"], _STATEMENT)
               for p, _, do, _ in _PRONOUNS for v in _VERBS_ANY for o in _THINGS + _MASS]))
    T.append(("can / will", 0.6,
              [(f"{p} {aux} {v}", [p, v, aux], _STATEMENT) for p, _, _, _ in _PRONOUNS for aux in ("can", "will")
               for v in _VERBS_INTRANSITIVE]))
    T.append(("go to place", 0.8,
              [(f"{p} {_verb('go', third)} to the {n}", [n, p, "go"], _STATEMENT)
               for p, _, _, third in _PRONOUNS for n in _PLACES]
              + [(f"{p} went to the {n} yesterday", ["yesterday", n, p, "go"], _STATEMENT)
                 for p, _, _, _ in _PRONOUNS for n in _PLACES]
              + [(f"{p} {_verb('come', third)} to the {n}", [n, p, "come"], _STATEMENT)
                 for p, _, _, third in _PRONOUNS for n in _PLACES]))
    T.append(("person has thing", 0.4,
              [(f"the {n} has {_article(a)} {a} {t}", [n, "have", t, a], _STATEMENT)
               for n in _PEOPLE for t in _THINGS for a in _ADJ_THING]))
    T.append(("fixed phrases", 0.4, [(t, g, _STATEMENT) for t, g in _FIXED]))
    return T


def normalize_text(text: str) -> str:
    """Lower-case, single spaces, no surrounding space."""
    return re.sub(r"\s+", " ", text.strip().lower())


@lru_cache(maxsize=None)
def sentence_pool() -> tuple[tuple[str, tuple[str, ...], int, float], ...]:
    """Every sentence the grammar makes: (text, glosses, kind, sampling weight), texts unique.

    A template's weight is shared by its sentences, so small templates are not drowned out.
    Kinds: 0 statement, 1 wh-question, 2 yes/no question.
    """
    seen: dict[str, tuple[str, tuple[str, ...], int, float]] = {}
    for name, weight, rows in _templates():
        for text, glosses, kind in rows:
            for g in glosses:
                if g not in VOCABULARY:
                    raise AssertionError(f"template {name!r}: gloss {g!r} is not in the vocabulary")
            if text not in seen:
                seen[text] = (text, tuple(glosses), kind, weight / len(rows))
    return tuple(seen.values())


@lru_cache(maxsize=None)
def _pool_index() -> dict[str, int]:
    return {row[0]: i for i, row in enumerate(sentence_pool())}


def sentence_to_glosses(text: str) -> list[str]:
    """The sign sequence (lexicon words, in signing order) of a grammar sentence, e.g.
    ``"where is the library?" -> ["library", "where"]``. Raises KeyError for a sentence the
    grammar does not make."""
    i = _pool_index().get(normalize_text(text))
    if i is None:
        raise KeyError(f"{text!r} is not a sentence of the built-in grammar")
    return list(sentence_pool()[i][1])
