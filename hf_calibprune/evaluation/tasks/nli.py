"""Natural language inference: ANLI (round 1) and e-SNLI 9-shot, RTE 3-shot, label exact match.

Template (the study's ``anli_premise_hypothesis_label_template`` and siblings in ``lib/eval.py``):
``Premise: {premise}\\nHypothesis: {hypothesis}\\nLabel: {label}``; with chain of thought the label is
replaced by ``{reason} So the answer is {label}.``. The exemplars below are the study's, without the
stray tab characters its strings carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..fewshot import Example, FewShotTask

__all__ = ["NLITask", "ANLI_R1", "ESNLI", "RTE", "NLI_LABELS"]

NLI_LABELS = ("entailment", "neutral", "contradiction")


def _pair(premise: str, hypothesis: str, label: str, reason: str | None = None) -> Example:
    return Example(fields={"premise": premise, "hypothesis": hypothesis}, label=label, rationale=reason)


@dataclass(frozen=True)
class NLITask(FewShotTask):
    """Premise/hypothesis pairs scored by exact match of the generated label."""

    key_fields: tuple[str, ...] = ("premise", "hypothesis")
    stop: str = "\n\n"
    max_new_tokens: int = 20
    explanation_field: str = "reason"

    def render(self, example: Example, answer: str | None) -> str:
        text = f"Premise: {example.fields['premise']}\nHypothesis: {example.fields['hypothesis']}\nLabel:"
        return text if answer is None else f"{text} {answer}"

    def parse_row(self, row: Mapping[str, Any]) -> Example:
        label = row["label"]
        label = NLI_LABELS[int(label)] if not isinstance(label, str) else label
        return _pair(row["premise"], row["hypothesis"], label, row.get(self.explanation_field))

    def exemplar_answer(self, example: Example, cot: bool) -> str:
        if not cot:
            return example.label
        reason = example.rationale.rstrip()
        joiner = " " if reason.endswith(".") else ". "
        return f"{reason}{joiner}So the answer is {example.label}."


@dataclass(frozen=True)
class _RTETask(NLITask):
    def parse_row(self, row: Mapping[str, Any]) -> Example:
        label = row["label"] if "label" in row else row["label_text"]
        if not isinstance(label, str):  # GLUE/SuperGLUE integer labels: 0 entailment, 1 not_entailment
            label = ("entailment", "not entailment")[int(label)]
        premise = row["premise"] if "premise" in row else row.get("sentence1", row.get("text1"))
        hypothesis = row["hypothesis"] if "hypothesis" in row else row.get("sentence2", row.get("text2"))
        return _pair(premise, hypothesis, label.replace("_", " "))


_ANLI = [
    (
        'Linguistics is the scientific study of language, and involves an analysis of language form, language meaning, and language in context. The earliest activities in the documentation and description of language have been attributed to the 4th century BCE Indian grammarian Pāṇini, who wrote a formal description of the Sanskrit language in his "Aṣṭādhyāyī ".',
        "Form and meaning are the only aspects of language linguistics is concerned with.",
        "contradiction",
        "Linguistics involves an analysis of language form, language meaning, and language in context, so context is also a crucial aspect. The algorithm missed this point, perhaps.",
    ),
    (
        'Franco Zeffirelli, KBE Grande Ufficiale OMRI (] ; born 12 February 1923) is an Italian director and producer of operas, films and television. He is also a former senator (1994–2001) for the Italian centre-right "Forza Italia" party. Recently, Italian researchers have found that he is one of the few distant relatives of Leonardo da Vinci.',
        "Franco Zeffirelli had a political career",
        "entailment",
        "Franco Zeffirelli was a senator so he had a political career. The system likely was fooled because I used words not used in the context.",
    ),
    (
        "Eme 15 is the self-titled debut studio album by Mexican-Argentine pop band, Eme 15. The album was released in Mexico and Latin America on June 26, 2012 through Warner Music México, and features songs from the Nickelodeon Latin America and Televisa musical television series, Miss XV.",
        "Eme 15 was released in Mexico and Latin America on June 27, 2012 through Warner Music México, and features songs from the Nickelodeon Latin America and Televisa musical television series, Miss XV.",
        "contradiction",
        "The album was released in June 26, 2012 not June 27, 2012. I added alot of correct info but changed one small detail.",
    ),
    (
        "Almost Sunrise is a 2016 American documentary film directed by Michael Collins. It recounts the story of two Iraq veterans, Tom Voss and Anthony Anderson, who, in an attempt to put their combat experience behind them, embark on a 2,700-mile trek on foot across America. It made its world premiere on the opening night of the Telluride Mountainfilm Festival on 27 May, 2016.",
        "Tom and Anthony have both killed someone.",
        "neutral",
        "The prompt references combat experience, but is vague, so you don't know if that entailed killing anyone. The system might have gotten this wrong because it doesn't understand the relationship between combat in Iraq and death.",
    ),
    (
        "Sergei Mikhailovich Grinkov (Russian: Серге́й Миха́йлович Гринько́в , February 4, 1967 — November 20, 1995) was a Russian pair skater. Together with partner and wife Ekaterina Gordeeva, he was the 1988 and 1994 Olympic Champion and a four-time World Champion.",
        "Sergei Mikhailovich Grinkov became the 1988 Olympic Champion with his partner while his wife cheered from the audience.",
        "contradiction",
        "It has been stated that Sergei Mikhailovich Grinkov skated and won the Olympic Championship with his partner and wife in 1988.",
    ),
    (
        'Lee Hong-gi (; ] ; Japanese:イ•ホンギ) is a South Korean singer-songwriter, actor, writer, and fashion designer. He is best known for his singing abilities and being the main singer of the South Korean rock band F.T. Island. Lee released his first solo extended play "FM302" in South Korea on 18 November 2015 and his Japanese album "AM302" on 9 December 2015.',
        "The South Korean rock band F.T. Island is best known for it's lead singer, Lee Hong-gi.",
        "neutral",
        "Lee Hong-gi is best known for his talents, according to the context; however, it is not mentioned that his band is most known for him. All squares are rectangles, but not all rectangles are squares. Using key words from the context (Lee Hong-gi, best known, the South Korean rock band) matched and I'm assuming the computer thought the matching strings of text was a positive.",
    ),
    (
        'Lost Moon: The Perilous Voyage of Apollo 13 (published in paperback as Apollo 13), is a non-fiction book first published in 1994 by astronaut James Lovell and journalist Jeffrey Kluger, about the failed April 1970 Apollo 13 lunar landing mission which Lovell commanded. The book is the basis of the 1995 film adaptation "Apollo 13", directed by Ron Howard.',
        "the book wouldnt have happened if we didnt try to go into space",
        "entailment",
        "there wouldnt have been a failed mission if we never tried to go to space.",
    ),
    (
        "Will Wheaton, born Willie Mack Wheaton Jr. (born October 26, 1972) is an American singer, songwriter and musician. He grew up in Los Angeles and is the son of Gospel singer Juanita Wheaton. He studied music in his teens and was eventually tutored by Furman Fordham, whose former students include Lena Horne.",
        "Willie Mack Wheaton Jr. was born 5 days away from the end of the 10th month of 1972",
        "entailment",
        "Weird way to say date again. It hates it.",
    ),
    (
        "3096 (3096 Tage) is a 2013 German drama film directed by Sherry Hormann. The film is based on the true story of Natascha Kampusch, a 10-year-old girl and her eight-year ordeal being kidnapped by Wolfgang Přiklopil. Northern Irish actress Antonia Campbell-Hughes portrays Kampusch, while Thure Lindhardt plays Přiklopil.",
        "Lindhardt wrote 3096.",
        "neutral",
        "It is unknown who wrote the film. The system was confused by the facts of the narrative.",
    ),
]
ANLI_EXEMPLARS = tuple(_pair(*item) for item in _ANLI)

_HORSE = "A person on a horse jumps over a broken down airplane."
_CHILDREN = "Children smiling and waving at camera"
_BOY = "A boy is jumping on skateboard in the middle of a red bridge."
ESNLI_EXEMPLARS = (
    _pair(_HORSE, "A person is training his horse for a competition.", "neutral", "the person is not necessarily training his horse."),
    _pair(_HORSE, "A person is at a diner, ordering an omelette.", "contradiction", "One cannot be on a jumping horse cannot be a diner ordering food."),
    _pair(_HORSE, "A person is outdoors, on a horse.", "entailment", "a broken down airplane is outdoors."),
    _pair(_CHILDREN, "They are smiling at their parents", "neutral"),
    _pair(_CHILDREN, "There are children present", "entailment"),
    _pair(_CHILDREN, "The kids are frowning", "contradiction"),
    _pair(_BOY, "The boy skates down the sidewalk.", "contradiction"),
    _pair(_BOY, "The boy does a skateboarding trick.", "entailment"),
    _pair(_BOY, "The boy is wearing safety equipment.", "neutral"),
)

RTE_EXEMPLARS = (
    _pair("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", "not entailment"),
    _pair(
        "A place of sorrow, after Pope John Paul II died, became a place of celebration, as Roman Catholic faithful gathered in downtown Chicago to mark the installation of new Pope Benedict XVI.",
        "Pope Benedict XVI is the new leader of the Roman Catholic Church.",
        "entailment",
    ),
    _pair(
        "Herceptin was already approved to treat the sickest breast cancer patients, and the company said, Monday, it will discuss with federal regulators the possibility of prescribing the drug for more breast cancer patients.",
        "Herceptin can be used to treat breast cancer.",
        "entailment",
    ),
)

ANLI_R1 = NLITask(
    name="anli_r1",
    source="anli",
    files=("anli_r1_test.jsonl", "test_r1*.json*", "*r1*test*.json*"),
    exemplars=ANLI_EXEMPLARS,
    cot_exemplars=ANLI_EXEMPLARS,
    description="ANLI round 1 test, 9-shot, label exact match",
)
ESNLI = NLITask(
    name="esnli",
    source="esnli",
    files=("esnli_test.jsonl", "test*.json*"),
    exemplars=ESNLI_EXEMPLARS,
    cot_exemplars=ESNLI_EXEMPLARS[:3],
    explanation_field="explanation_1",
    description="e-SNLI test, 9-shot (3-shot with chain of thought), label exact match",
)
RTE = _RTETask(
    name="rte",
    source="rte",
    files=("val.jsonl", "validation*.json*", "test*.json*"),
    exemplars=RTE_EXEMPLARS,
    description="RTE validation (GLUE dev), 3-shot, label exact match",
)
