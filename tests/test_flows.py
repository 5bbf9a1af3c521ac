"""Flow files: the shipped flows load; broken files are refused with the right file and line.

Then each step kind on its own: what it accepts, what clients are shown of it, and the
message the agent gets while it is not done.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from business.catalogue import BUSINESS_TYPES, OUTCOME_TYPES, Business
from business.exceptions import AnswerError, FlowError
from business.flow import Flow
from business.loader import DEFAULT_FLOWS_DIR, MAX_FILE_BYTES, load_flow, load_flows
from business.risk import Level, Option, Product, Question, level_for
from business.steps import (
    STEP_KINDS,
    STEP_TYPES,
    ConsentStep,
    DisclosureStep,
    DocumentStep,
    IdentityStep,
    OutcomeStep,
    QuestionnaireStep,
    SignatureStep,
    StepFacts,
    SuitabilityStep,
)
from business.text import Text

# line numbers matter: the tests below name them
BASE = textwrap.dedent("""\
    business: account_opening
    documents:
      agreement:
        title: Agreement
        file: agreement.md
    steps:
      - id: consent
        kind: consent
        consents: [recording, face]
      - id: identity
        kind: identity
      - id: terms
        kind: disclosure
        text: Terms of the account.
      - id: read
        kind: document
        document: agreement
      - id: sign
        kind: signature
        document: read
      - id: open
        kind: outcome
        outcome: {type: account}
    """)

WEALTH = textwrap.dedent("""\
    business: wealth_product
    documents:
      sheet: {title: Sheet, file: sheet.md}
    steps:
      - {id: consent, kind: consent, consents: [recording]}
      - {id: identity, kind: identity}
      - id: risk
        kind: questionnaire
        questions:
          - id: q1
            text: Loss?
            options:
              - {id: none, text: None, score: 0}
              - {id: some, text: Some, score: 5}
          - id: q2
            text: Horizon?
            options:
              - {id: short, text: Short, score: 0}
              - {id: long, text: Long, score: 5}
        levels:
          - {code: C1, min_score: 0}
          - {code: C2, min_score: 3}
          - {code: C3, min_score: 5}
          - {code: C4, min_score: 8}
          - {code: C5, min_score: 10}
      - id: fit
        kind: suitability
        questionnaire: risk
        product: {code: P1, name: Product one, risk_level: R3}
      - {id: risks, kind: disclosure, text: Not a deposit.}
      - {id: read, kind: document, document: sheet}
      - {id: sign, kind: signature, document: read}
      - id: order
        kind: outcome
        outcome: {type: order, product_code: P1, amount: 1000}
    """)

DOCS = {"agreement.md": "# Agreement\n\nThe terms.\n", "sheet.md": "# Product sheet\n"}


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def write(
    tmp_path: Path, text: str | bytes, docs: dict[str, str] | None = None, name: str = "flow.yaml"
) -> Path:
    documents = tmp_path / "documents"
    documents.mkdir(exist_ok=True)
    for doc, content in (DOCS if docs is None else docs).items():
        (documents / doc).write_text(content, encoding="utf-8")
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, docs: dict[str, str] | None = None, **kw) -> Flow:
    return load_flow(write(tmp_path, text, docs), **kw)


def refused(
    tmp_path: Path,
    text: str | bytes,
    line: int | None,
    message: str,
    docs: dict[str, str] | None = None,
    where: Path | None = None,
) -> FlowError:
    path = write(tmp_path, text, docs)
    with pytest.raises(FlowError) as info:
        load_flow(path)
    err = info.value
    where = where or path
    assert err.path == where and err.line == line, str(err)
    prefix = f"{where}: " if line is None else f"{where}:{line}: "
    assert str(err).startswith(prefix) and str(err) == prefix + err.message
    assert message in err.message, str(err)
    return err


# -- the shipped flows ---------------------------------------------------------------------


def test_shipped_flows_load_with_their_steps_in_order():
    flows = load_flows(DEFAULT_FLOWS_DIR)
    assert set(flows) == {"account_opening", "loan_signing", "wealth_product"}
    kinds = {b: [s.kind for s in f.steps] for b, f in flows.items()}
    assert kinds["account_opening"] == [
        "consent",
        "identity",
        "disclosure",
        "document",
        "signature",
        "outcome",
    ]
    assert kinds["loan_signing"] == [
        "consent",
        "identity",
        "disclosure",
        "document",
        "signature",
        "outcome",
    ]
    assert kinds["wealth_product"] == [
        "consent",
        "identity",
        "questionnaire",
        "suitability",
        "disclosure",
        "document",
        "signature",
        "outcome",
    ]
    for flow in flows.values():
        first = flow.steps[0]
        assert "recording" in first.consents and "face" in first.consents
        assert flow.step(flow.steps[1].id).liveness
        sig = next(s for s in flow.steps if s.kind == "signature")
        assert flow.step(sig.document or "").kind == "document"
        for s in flow.steps:
            assert flow.steps[flow.index(s.id)] is s
            assert s.title.en and s.title.zh and s.title.en != s.title.zh
        disclosure = next(s for s in flow.steps if s.kind == "disclosure")
        assert disclosure.text and disclosure.text.zh != disclosure.text.en
        assert disclosure.confirm_by == ("agent", "customer")
    with pytest.raises(KeyError):
        flows["loan_signing"].step("nowhere")
    with pytest.raises(KeyError):
        flows["loan_signing"].index("nowhere")


def test_shipped_outcomes_and_figures():
    flows = load_flows(DEFAULT_FLOWS_DIR)
    account = flows["account_opening"]
    assert account.steps[-1].outcome == {"type": "account"}  # the class comes from the config
    assert "Type II account" in account.step("account_terms").text.en
    assert "**II类户**" in account.documents["account_agreement"].content

    loan = flows["loan_signing"]
    terms = loan.steps[-1].outcome["terms"]
    assert terms == {"amount": 100000, "currency": "CNY", "term_months": 36, "annual_rate": 3.85}
    contract = loan.documents["loan_contract"].content
    # the contract quotes the terms; 100 000 at 3.85 % over 36 months: 2,945.73 a month
    assert "CNY 100,000.00" in contract and "36个月" in contract and "3.85%" in contract
    assert "CNY 2,945.73" in contract and "{{" not in contract
    assert (
        "CNY 2,945.73" in loan.step("loan_terms").text.en
        and "{{" not in loan.step("loan_terms").text.zh
    )

    wealth = flows["wealth_product"]
    fit = wealth.step("suitability")
    assert fit.questionnaire == "risk_assessment"
    assert fit.product is not None and (fit.product.risk_level, fit.product.risk_rank) == ("R3", 3)
    order = wealth.steps[-1]
    assert order.outcome == {"type": "order", "product_code": fit.product.code, "amount": 50000}
    assert order.product == fit.product
    assert wealth.step("risk_disclosure").document == "risk_disclosure"
    assert "理财非存款、产品有风险、投资须谨慎" in wealth.step("risk_disclosure").text.zh
    for doc in wealth.documents.values():
        assert "理财非存款、产品有风险、投资须谨慎" in doc.content


def test_shipped_questionnaire_levels():
    step = load_flows(DEFAULT_FLOWS_DIR)["wealth_product"].step("risk_assessment")
    assert len(step.questions) == 5 and [lv.code for lv in step.levels] == [
        "C1",
        "C2",
        "C3",
        "C4",
        "C5",
    ]
    assert [lv.rank for lv in step.levels] == [1, 2, 3, 4, 5]
    for q in step.questions:  # options from the most cautious to the most risk-taking
        scores = [o.score for o in q.options]
        assert scores == sorted(scores) and len(set(scores)) == len(scores)
    lowest = sum(q.options[0].score for q in step.questions)
    highest = sum(q.options[-1].score for q in step.questions)
    assert step.level(lowest).code == "C1" and step.level(highest).code == "C5"
    c3 = next(lv for lv in step.levels if lv.code == "C3")
    assert step.level(c3.min_score).rank == 3 and step.level(c3.min_score - 1).rank == 2


def test_document_hashes():
    flows = load_flows(DEFAULT_FLOWS_DIR)
    docs = DEFAULT_FLOWS_DIR / "documents"
    seen = 0
    for flow in flows.values():
        for doc in flow.documents.values():
            raw = (docs / doc.path.name).read_bytes()
            assert doc.path == (docs / doc.path.name).resolve()
            assert doc.sha256 == hashlib.sha256(doc.content.encode("utf-8")).hexdigest()
            if b"{{" not in raw:  # no placeholders: the hash is the file's
                assert doc.sha256 == hashlib.sha256(raw).hexdigest()
                seen += 1
    assert seen >= 1


def test_a_plain_string_is_both_languages(tmp_path):
    flow = load(tmp_path, BASE)
    assert flow.step("terms").text == Text("Terms of the account.", "Terms of the account.")
    assert flow.documents["agreement"].title == Text("Agreement", "Agreement")
    assert flow.title == Text("Personal account opening", "个人账户开立")  # default
    assert flow.step("identity").title.zh == "身份核验"  # default per kind
    assert flow.version == 1 and flow.path == tmp_path / "flow.yaml"
    assert [s.line for s in flow.steps] == [7, 10, 12, 15, 18, 21]
    text = edit(BASE, "text: Terms of the account.", "text: {en: Terms., zh: 条款。}")
    assert load(tmp_path, text).step("terms").text == Text("Terms.", "条款。")
    # YAML would read these as a boolean and a number: a text stays what was written
    text = edit(BASE, "text: Terms of the account.", "text: {en: No, zh: 2025}")
    assert load(tmp_path, text).step("terms").text == Text("No", "2025")


LEVELS = tuple(
    Level(code, score, rank, Text(code, code))
    for code, score, rank in [("C1", 0, 1), ("C2", 3, 2), ("C3", 5, 3), ("C4", 8, 4), ("C5", 10, 5)]
)


def test_level_for():
    step = QuestionnaireStep(
        id="risk", title=Text("Risk", "风险"), line=1, questions=(), levels=LEVELS
    )
    assert [step.level(s).code for s in (0, 2, 3, 4, 5, 7, 8, 10, 30)] == [
        "C1",
        "C1",
        "C2",
        "C2",
        "C3",
        "C3",
        "C4",
        "C5",
        "C5",
    ]
    assert level_for(LEVELS, -1).code == "C1"  # below every level: the lowest
    with pytest.raises(ValueError):
        QuestionnaireStep(id="x", title=Text("x", "x"), line=1, questions=(), levels=()).level(3)


def test_the_wealth_example_loads(tmp_path):
    flow = load(tmp_path, WEALTH)
    assert [s.kind for s in flow.steps] == [
        "consent",
        "identity",
        "questionnaire",
        "suitability",
        "disclosure",
        "document",
        "signature",
        "outcome",
    ]
    assert flow.step("risk").level(5).code == "C3"
    assert flow.step("order").product == flow.step("fit").product


# -- placeholders ----------------------------------------------------------------------------


def test_placeholders_are_filled_from_the_outcome(tmp_path):
    docs = {"agreement.md": "Account class: {{account_class}}\n"}
    assert load(tmp_path, BASE, docs).documents["agreement"].content == "Account class: II\n"
    assert (
        load(tmp_path, BASE, docs, account_class="III").documents["agreement"].content
        == "Account class: III\n"
    )
    text = edit(BASE, "{type: account}", "{type: account, class: III}")
    flow = load(tmp_path, text, docs)
    assert flow.steps[-1].outcome == {"type": "account", "class": "III"}
    doc = flow.documents["agreement"]
    assert doc.content == "Account class: III\n"
    assert doc.sha256 == hashlib.sha256(b"Account class: III\n").hexdigest()


def test_loan_placeholders(tmp_path):
    text = edit(
        edit(BASE, "business: account_opening", "business: loan_signing"),
        "outcome: {type: account}",
        "outcome: {type: loan, terms: {amount: 12000, currency: CNY, term_months: 12, "
        "annual_rate: 0}}",
    )
    docs = {"agreement.md": "{{currency}} {{amount}} / {{ monthly_payment }}\n"}
    # percent per year: 0.06 would be a slip for 6 %
    refused(
        tmp_path, text, 23, "annual_rate (percent per year) must be between 0.1 and 36, not 0", docs
    )
    flow = load(tmp_path, text.replace("annual_rate: 0}", "annual_rate: 6}"), docs)
    # 12 000 at 6 % over 12 months: 1,032.80 a month
    assert flow.documents["agreement"].content == "CNY 12,000.00 / 1,032.80\n"


# -- YAML and the top level ------------------------------------------------------------------


def test_yaml_syntax_error(tmp_path):
    text = edit(BASE, "text: Terms of the account.", "text: Terms: of the account")
    refused(tmp_path, text, 14, "YAML syntax error: mapping values are not allowed here")
    refused(tmp_path, BASE + "  - {id: x, kind: consent\n", 25, "YAML syntax error")
    refused(tmp_path, BASE.encode() + b"# \xff\n", 24, "not valid UTF-8")


def test_top_level(tmp_path):
    refused(tmp_path, "", 1, "the file is empty")
    refused(tmp_path, "# only a comment\n\n- a\n- b\n", 3, "must be a mapping")
    refused(
        tmp_path,
        edit(BASE, "documents:\n", "colour: blue\ndocuments:\n"),
        2,
        "unknown key 'colour'",
    )
    refused(
        tmp_path,
        edit(BASE, "business: account_opening\n", "# no business\n"),
        2,
        "missing 'business'",
    )
    refused(tmp_path, BASE[: BASE.index("steps:")], 1, "missing 'steps'")
    refused(
        tmp_path,
        edit(BASE, "business: account_opening", "business: mortgage"),
        1,
        "unknown business 'mortgage'",
    )
    refused(
        tmp_path,
        edit(BASE, "business: account_opening", "business: [account_opening]"),
        1,
        "business must be a string",
    )
    refused(
        tmp_path,
        edit(BASE, "documents:\n", "version: 0\ndocuments:\n"),
        2,
        "version must be between 1",
    )
    refused(
        tmp_path,
        edit(BASE, "steps:\n", "business: loan_signing\nsteps:\n"),
        6,
        "'business' is given twice in the flow file (first at line 1)",
    )


def test_file_too_large(tmp_path):
    text = BASE + "#" + "x" * MAX_FILE_BYTES + "\n"
    refused(tmp_path, text, None, f"more than {MAX_FILE_BYTES}")


# -- steps ---------------------------------------------------------------------------------


def test_unknown_step_kind(tmp_path):
    refused(
        tmp_path,
        edit(BASE, "    kind: identity\n", "    kind: teleport\n"),
        11,
        "unknown step kind 'teleport'",
    )


def test_duplicate_step_id(tmp_path):
    refused(
        tmp_path,
        edit(BASE, "- id: terms", "- id: identity"),
        12,
        "duplicate step id 'identity' (first at line 10)",
    )


def test_unknown_and_duplicate_keys_in_a_step(tmp_path):
    refused(
        tmp_path,
        edit(BASE, "recording, face]\n", "recording, face]\n    liveness: true\n"),
        10,
        "unknown key 'liveness' in a consent step",
    )
    refused(
        tmp_path,
        edit(BASE, "kind: disclosure\n", "kind: disclosure\n    kind: disclosure\n"),
        14,
        "'kind' is given twice",
    )


def test_missing_fields_per_kind(tmp_path):
    refused(
        tmp_path,
        edit(BASE, "    text: Terms of the account.\n", ""),
        12,
        "disclosure step 'terms' needs 'text'",
    )
    refused(
        tmp_path,
        edit(BASE, "    consents: [recording, face]\n", ""),
        7,
        "consent step 'consent' needs 'consents'",
    )
    refused(
        tmp_path,
        edit(BASE, "    document: read\n", ""),
        18,
        "signature step 'sign' needs 'document'",
    )
    refused(
        tmp_path,
        edit(BASE, "    outcome: {type: account}\n", ""),
        21,
        "outcome step 'open' needs 'outcome'",
    )
    refused(tmp_path, edit(BASE, "{type: account}", "{class: II}"), 23, "outcome needs 'type'")
    refused(
        tmp_path, edit(BASE, "{type: account}", "{type: gift}"), 23, "unknown outcome type 'gift'"
    )
    refused(
        tmp_path,
        edit(BASE, "{type: account}", "{type: loan}"),
        23,
        "a account_opening flow books an outcome of type 'account', not 'loan'",
    )
    refused(
        tmp_path,
        edit(BASE, "{type: account}", "{type: account, class: I}"),
        23,
        "a Type II or III account (银发〔2015〕392号)",
    )
    refused(
        tmp_path,
        edit(BASE, "  - id: identity\n    kind: identity\n", "  - kind: identity\n"),
        10,
        "needs 'id'",
    )
    wealth = WEALTH.split("    levels:\n")[0] + WEALTH.split("{code: C5, min_score: 10}\n")[1]
    refused(tmp_path, wealth, 7, "questionnaire step 'risk' needs 'levels'")
    refused(
        tmp_path,
        edit(WEALTH, "    product: {code: P1, name: Product one, risk_level: R3}\n", ""),
        26,
        "suitability step 'fit' needs 'product'",
    )
    refused(
        tmp_path,
        edit(WEALTH, "product_code: P1", "product_code: P9"),
        35,
        "product 'P9' is not the product of an earlier suitability step",
    )


def test_documents(tmp_path):
    refused(
        tmp_path, BASE, 5, "document file 'agreement.md' does not exist", docs={"other.md": "x"}
    )
    refused(
        tmp_path,
        edit(BASE, "document: agreement", "document: contract"),
        17,
        "no document 'contract' under 'documents'",
    )
    refused(tmp_path, edit(BASE, "file: agreement.md", "file: ../secret.md"), 5, "no '..'")
    refused(tmp_path, edit(BASE, "file: agreement.md", "file: /etc/passwd"), 5, "no absolute path")
    outside = tmp_path / "outside.md"
    outside.write_text("secret")
    (tmp_path / "documents").mkdir(exist_ok=True)
    (tmp_path / "documents" / "link.md").symlink_to(outside)
    refused(tmp_path, edit(BASE, "file: agreement.md", "file: link.md"), 5, "leads outside")
    refused(tmp_path, BASE, 5, "more than 1048576", docs={"agreement.md": "x" * (1 << 20) + "x"})
    doc = tmp_path / "documents" / "agreement.md"
    refused(
        tmp_path,
        BASE,
        3,
        "unknown placeholder {{amount}} (known: account_class)",
        docs={"agreement.md": "# Agreement\n\nAmount {{amount}}\n"},
        where=doc.resolve(),
    )
    (tmp_path / "documents" / "agreement.md").write_bytes(b"# Agreement\n\n\xff\n")
    with pytest.raises(FlowError) as info:
        load_flow(write(tmp_path, BASE, docs={}))
    assert str(info.value).startswith(f"{doc.resolve()}:3: ") and "not valid UTF-8" in str(
        info.value
    )


def test_signature_and_suitability_references(tmp_path):
    refused(
        tmp_path,
        edit(BASE, "document: read", "document: open"),
        20,
        "step 'sign' names 'open', which is not an earlier step",
    )
    refused(
        tmp_path,
        edit(BASE, "document: read", "document: terms"),
        20,
        "names 'terms', a disclosure step: it must name a document step",
    )
    refused(
        tmp_path,
        edit(WEALTH, "questionnaire: risk", "questionnaire: risks"),
        28,
        "step 'fit' names 'risks', which is not an earlier step",
    )
    early = edit(
        WEALTH,
        "  - id: risk\n",
        "  - {id: fit0, kind: suitability, questionnaire: risk, "
        "product: {code: P0, name: P, risk_level: R1}}\n  - id: risk\n",
    )
    refused(
        tmp_path,
        early,
        7,
        "step 'fit0' names 'risk', which is not an earlier step: it must name a "
        "questionnaire step declared before it",
    )


def test_questionnaire_rules(tmp_path):
    refused(
        tmp_path,
        edit(WEALTH, "{code: C1, min_score: 0}", "{code: C1, min_score: 1}"),
        21,
        "the lowest level C1 starts at 1, but a customer can score 0",
    )
    refused(
        tmp_path,
        edit(WEALTH, "{code: C3, min_score: 5}", "{code: C3, min_score: 2}"),
        23,
        "min_score of C3 must be above C2's 3",
    )
    refused(
        tmp_path,
        edit(WEALTH, "{code: C5, min_score: 10}", "{code: C5, min_score: 11}"),
        25,
        "level C5 can never be reached: the highest possible score is 10",
    )
    refused(
        tmp_path,
        edit(WEALTH, "- {id: long, text: Long, score: 5}", "- {id: short, text: Long, score: 5}"),
        19,
        "duplicate option id 'short' in question 'q2'",
    )
    refused(
        tmp_path,
        edit(WEALTH, "risk_level: R3", "risk_level: R6"),
        29,
        "product risk R6 is above every level of questionnaire 'risk'",
    )
    refused(tmp_path, edit(WEALTH, "risk_level: R3", "risk_level: high"), 29, "R1 to R9")


# -- requires ------------------------------------------------------------------------------


def test_requires(tmp_path):
    text = edit(
        BASE, "text: Terms of the account.\n", "text: Terms of the account.\n    requires: [read]\n"
    )
    refused(
        tmp_path,
        edit(text, "document: agreement\n", "document: agreement\n    requires: [terms]\n"),
        12,
        "requires cycle: terms -> read -> terms",
    )
    three = edit(
        edit(text, "document: agreement\n", "document: agreement\n    requires: [sign]\n"),
        "document: read\n",
        "document: read\n    requires: [identity, terms]\n",
    )
    refused(tmp_path, three, 12, "requires cycle: terms -> read -> sign -> terms")
    refused(tmp_path, text.replace("[read]", "[terms]"), 12, "requires cycle: terms -> terms")
    refused(
        tmp_path,
        text.replace("[read]", "[sign]"),
        15,
        "step 'terms' requires 'sign', which comes later (line 19): steps run in the declared order",
    )
    refused(
        tmp_path,
        text.replace("[read]", "[nowhere]"),
        15,
        "step 'terms' requires 'nowhere', which is not a step of this flow",
    )
    multi = text.replace("    requires: [read]\n", "    requires:\n      - consent\n      - read\n")
    refused(tmp_path, multi, 17, "requires 'read', which comes later")
    flow = load(tmp_path, text.replace("[read]", "[consent, identity]"))
    assert flow.step("terms").requires == ("consent", "identity")


# -- regulatory order ----------------------------------------------------------------------


def test_the_first_step_is_consent_to_recording(tmp_path):
    refused(
        tmp_path,
        edit(BASE, "consents: [recording, face]", "consents: [face]"),
        7,
        "the first step must be a consent step asking for 'recording'",
    )
    refused(
        tmp_path,
        edit(BASE, "  - id: consent\n    kind: consent\n    consents: [recording, face]\n", ""),
        7,
        "the first step must be a consent step asking for 'recording'",
    )
    refused(
        tmp_path,
        edit(BASE, "consents: [recording, face]", "consents: [recording, video]"),
        9,
        "consents of step 'consent': unknown 'video'",
    )


def test_signature_after_identity_and_every_disclosure(tmp_path):
    refused(
        tmp_path,
        edit(BASE, "  - id: identity\n    kind: identity\n", ""),
        16,
        "signature step 'sign' must come after an identity step",
    )
    late = edit(
        BASE,
        "  - id: open\n",
        "  - id: more\n    kind: disclosure\n    text: More.\n  - id: open\n",
    )
    refused(
        tmp_path,
        late,
        18,
        "must come after every disclosure step, but 'more' (line 21) comes after it",
    )


def test_outcome_after_signature(tmp_path):
    refused(
        tmp_path,
        edit(BASE, "  - id: sign\n    kind: signature\n    document: read\n", ""),
        18,
        "outcome step 'open' must come after a signature step",
    )
    refused(
        tmp_path,
        BASE + "  - {id: again, kind: outcome, outcome: {type: account}}\n",
        24,
        "a flow has one outcome step",
    )


def test_identity_without_face_consent_must_allow_manual(tmp_path):
    text = edit(
        WEALTH,
        "{id: identity, kind: identity}",
        "{id: identity, kind: identity, allow_manual: false}",
    )
    refused(tmp_path, text, 6, "no earlier consent step asks for 'face': it could never pass")
    flow = load(tmp_path, edit(text, "consents: [recording]", "consents: [recording, face]"))
    assert flow.step("identity").allow_manual is False


# -- limits --------------------------------------------------------------------------------


def test_limits(tmp_path):
    refused(tmp_path, edit(BASE, "- id: terms", "- id: Terms"), 12, "step id 'Terms' is not valid")
    refused(tmp_path, edit(BASE, "- id: terms", "- id: " + "t" * 41), 12, "is not valid")
    refused(
        tmp_path,
        edit(BASE, "text: Terms of the account.", "text: " + "x" * 20_001),
        14,
        "20001 characters long, more than 20000",
    )
    steps = "".join(f"  - {{id: s{i}, kind: identity}}\n" for i in range(51))
    refused(
        tmp_path, "business: account_opening\nsteps:\n" + steps, 53, "steps: more than 50 entries"
    )
    refused(tmp_path, "business: account_opening\nsteps: []\n", 2, "a flow needs at least one step")
    refused(
        tmp_path,
        edit(BASE, "text: Terms of the account.", "text: Pay {{fee}}."),
        14,
        "unknown placeholder {{fee}}",
    )
    block = edit(BASE, "text: Terms of the account.", "text: |-\n      Terms.\n      Pay {{fee}}.")
    refused(tmp_path, block, 16, "unknown placeholder {{fee}}")


def test_load_flows(tmp_path):
    write(tmp_path, BASE, name="a.yaml")
    write(tmp_path, WEALTH, name="b.yml")
    (tmp_path / "notes.txt").write_text("not a flow")
    flows = load_flows(tmp_path)
    assert sorted(flows) == ["account_opening", "wealth_product"]
    assert (
        flows["wealth_product"].documents["sheet"].path
        == (tmp_path / "documents" / "sheet.md").resolve()
    )
    write(tmp_path, "# the same business again\n" + BASE, name="c.yaml")
    with pytest.raises(FlowError) as info:
        load_flows(tmp_path)
    assert str(info.value).startswith(
        f"{tmp_path / 'c.yaml'}:2: business 'account_opening' is already defined by a.yaml"
    )


# -- the catalogue ---------------------------------------------------------------------------


def test_the_catalogue_is_the_list_of_businesses():
    assert (
        BUSINESS_TYPES
        == tuple(b.value for b in Business)
        == ("account_opening", "loan_signing", "wealth_product")
    )
    assert OUTCOME_TYPES == ("account", "loan", "order")
    with pytest.raises(ValueError):
        Business.of("mortgage")
    for business in Business:
        assert Business(business.value) is Business.of(business.value) is business
        assert str(business) == business.value
        assert business.label.en and business.label.zh and business.label.en != business.label.zh
        assert business.flow_title.en and business.flow_title.zh
    # every business has its shipped flow, and the flow books the catalogue's outcome type
    flows = load_flows(DEFAULT_FLOWS_DIR)
    assert set(flows) == set(BUSINESS_TYPES)
    for business, flow in flows.items():
        assert isinstance(flow.steps[-1], OutcomeStep)
        assert flow.steps[-1].outcome["type"] == Business(business).outcome


# -- each step kind: what it accepts ---------------------------------------------------------


def test_every_kind_has_its_class():
    assert STEP_KINDS == (
        "consent",
        "identity",
        "disclosure",
        "questionnaire",
        "suitability",
        "document",
        "signature",
        "outcome",
    )
    for kind, cls in STEP_TYPES.items():
        assert cls.kind == kind and cls.default_title.en != cls.default_title.zh
        assert set(cls.required) <= {*cls.keys, "text"}
    assert [k for k, cls in STEP_TYPES.items() if cls.needs_identity] == ["identity"]


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        (
            "    kind: identity\n",
            "    kind: identity\n    consents: [face]\n",
            12,
            "unknown key 'consents' in a identity step (allowed: id, kind, title, requires, text, liveness, "
            "allow_manual)",
        ),
        (
            "    kind: identity\n",
            "    kind: identity\n    liveness: 'true'\n",
            12,
            "liveness of step 'identity' must be true or false",
        ),
        (
            "    kind: identity\n",
            "    kind: identity\n    allow_manual: 1\n",
            12,
            "allow_manual of step 'identity' must be true or false",
        ),
        (
            "consents: [recording, face]",
            "consents: []",
            9,
            "consents of step 'consent' must not be empty (one or more of recording, face)",
        ),
        (
            "consents: [recording, face]",
            "consents: [recording, recording]",
            9,
            "consents of step 'consent': 'recording' is listed twice",
        ),
        (
            "consents: [recording, face]",
            "consents: recording",
            9,
            "consents of step 'consent' must be a list",
        ),
        (
            "    text: Terms of the account.\n",
            "    text: Terms of the account.\n    confirm_by: [auditor]\n",
            15,
            "confirm_by of step 'terms': unknown 'auditor' (one or more of agent, customer)",
        ),
        (
            "    text: Terms of the account.\n",
            "    text: Terms of the account.\n    document: nope\n",
            15,
            "step 'terms': no document 'nope' under 'documents' (declared: agreement)",
        ),
        (
            "    text: Terms of the account.\n",
            "    text: Terms of the account.\n    outcome: {type: account}\n",
            15,
            "unknown key 'outcome' in a disclosure step",
        ),
        (
            "document: agreement",
            "document: Agreement",
            17,
            "document of step 'read' 'Agreement' is not valid",
        ),
        ("document: read", "document: [read]", 20, "document of step 'sign' must be a string"),
        (
            "{type: account}",
            "{type: account, terms: x}",
            23,
            "unknown key 'terms' in account outcome (allowed: type, class)",
        ),
    ],
)
def test_each_kind_checks_its_own_keys(tmp_path, old, new, line, message):
    refused(tmp_path, edit(BASE, old, new), line, message)


def _loan(outcome: str) -> str:
    return edit(
        edit(BASE, "business: account_opening", "business: loan_signing"),
        "outcome: {type: account}",
        f"outcome: {outcome}",
    )


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (
            "{type: loan}",
            "a loan outcome needs 'terms' (amount, currency, term_months, annual_rate)",
        ),
        (
            "{type: loan, terms: {amount: 1000, term_months: 12, annual_rate: 4}}",
            "loan terms need 'currency'",
        ),
        (
            "{type: loan, terms: {amount: 1000, currency: yuan, term_months: 12, annual_rate: 4}}",
            "currency 'yuan' is not valid: three upper-case letters (CNY)",
        ),
        (
            "{type: loan, terms: {amount: 1000, currency: CNY, term_months: 361, annual_rate: 4}}",
            "term_months must be between 1 and 360, not 361",
        ),
        (
            "{type: loan, terms: {amount: 0, currency: CNY, term_months: 12, annual_rate: 4}}",
            "loan amount must be between 1 and 1e+09, not 0",
        ),
        (
            "{type: loan, terms: {amount: 1000, currency: CNY, term_months: 12, annual_rate: 4, fee: 1}}",
            "unknown key 'fee' in loan terms",
        ),
    ],
)
def test_loan_outcomes(tmp_path, outcome, message):
    refused(tmp_path, _loan(outcome), 23, message)


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        (
            "          - {id: some, text: Some, score: 5}\n",
            "",
            13,
            "question 'q1' needs at least two options",
        ),
        (
            "{id: some, text: Some, score: 5}",
            "{id: some, text: Some}",
            14,
            "an option needs 'score'",
        ),
        (
            "{id: long, text: Long, score: 5}",
            "{id: long, text: Long, score: 1001}",
            19,
            "score of option 'long' must be between 0 and 1000, not 1001",
        ),
        ("- id: q2", "- id: q1", 15, "duplicate question id 'q1' in step 'risk'"),
        ("        text: Horizon?\n", "", 15, "a question needs 'text'"),
        (
            "{code: C2, min_score: 3}",
            "{code: C2, min_score: 3, rank: 1}",
            22,
            "levels go from the lowest to the highest: rank of C2 must be above C1's 1",
        ),
        (
            "{code: C2, min_score: 3}",
            "{code: c2, min_score: 3}",
            22,
            "level code 'c2' is not valid",
        ),
        ("{code: C2, min_score: 3}", "{min_score: 3}", 22, "a level needs 'code'"),
        (
            "questionnaire: risk",
            "questionnaire: identity",
            28,
            "step 'fit' names 'identity', a identity step: it must name a questionnaire step",
        ),
        (
            "product: {code: P1, name: Product one, risk_level: R3}",
            "product: {code: P1, risk_level: R3}",
            29,
            "the product needs 'name'",
        ),
        (
            "product: {code: P1, name: Product one, risk_level: R3}",
            "product: {code: p1, name: Product one, risk_level: R3}",
            29,
            "product code 'p1' is not valid",
        ),
        ("amount: 1000}", "amount: 0}", 35, "order amount must be between 0.01 and 1e+10, not 0"),
        (
            "{type: order, product_code: P1, amount: 1000}",
            "{type: order, product_code: P1}",
            35,
            "an order outcome needs 'amount'",
        ),
    ],
)
def test_questionnaire_suitability_and_order_keys(tmp_path, old, new, line, message):
    refused(tmp_path, edit(WEALTH, old, new), line, message)


def test_each_kind_reads_its_values(tmp_path):
    text = edit(
        edit(
            WEALTH,
            "{id: identity, kind: identity}",
            "{id: identity, kind: identity, liveness: true, allow_manual: false}",
        ),
        "consents: [recording]",
        "consents: [recording, face]",
    )
    text = edit(
        text,
        "{id: risks, kind: disclosure, text: Not a deposit.}",
        "{id: risks, kind: disclosure, text: Not a deposit., confirm_by: [customer], document: sheet}",
    )
    flow = load(tmp_path, text)
    consent, identity, risk, fit, risks, read, sign, order = flow.steps
    assert isinstance(consent, ConsentStep) and consent.consents == ("recording", "face")
    assert consent.asks("face") and consent.asks("recording") and not consent.asks("video")
    assert isinstance(identity, IdentityStep) and identity.liveness and not identity.allow_manual
    assert isinstance(risk, QuestionnaireStep) and [q.id for q in risk.questions] == ["q1", "q2"]
    assert risk.questions[0].options == (
        Option("none", Text("None", "None"), 0),
        Option("some", Text("Some", "Some"), 5),
    )
    assert [(lv.code, lv.rank) for lv in risk.levels] == [
        ("C1", 1),
        ("C2", 2),
        ("C3", 3),
        ("C4", 4),
        ("C5", 5),
    ]
    assert isinstance(fit, SuitabilityStep) and fit.questionnaire == "risk"
    assert fit.product == Product("P1", Text("Product one", "Product one"), "R3", 3)
    assert (
        isinstance(risks, DisclosureStep)
        and risks.confirm_by == ("customer",)
        and risks.document == "sheet"
    )
    assert isinstance(read, DocumentStep) and read.document == "sheet"
    assert isinstance(sign, SignatureStep) and sign.document == "read"
    assert isinstance(order, OutcomeStep) and order.product is fit.product
    sheet = flow.documents["sheet"]
    assert read.shown_document(flow) is sheet and sign.shown_document(flow) is sheet
    assert risks.shown_document(flow) is sheet
    assert [s.shown_document(flow) for s in (consent, identity, risk, fit, order)] == [None] * 5


# -- each step kind: what clients are shown ---------------------------------------------------


def test_views(tmp_path):
    text = edit(
        WEALTH,
        "{id: risks, kind: disclosure, text: Not a deposit.}",
        "{id: risks, kind: disclosure, text: Not a deposit., document: sheet}",
    )
    flow = load(tmp_path, text)
    sheet = flow.documents["sheet"]
    doc_view = {"id": "sheet", "title": {"en": "Sheet", "zh": "Sheet"}, "sha256": sheet.sha256}
    views = {s.id: s.view(flow) for s in flow.steps}
    assert views["consent"] == {
        "id": "consent",
        "kind": "consent",
        "title": {"en": "Consent to recording", "zh": "录音录像授权"},
        "consents": ["recording"],
    }
    assert views["identity"] == {
        "id": "identity",
        "kind": "identity",
        "title": {"en": "Identity verification", "zh": "身份核验"},
    }
    # the customer is shown the questions and options, never their scores
    assert views["risk"]["questions"][0] == {
        "id": "q1",
        "text": {"en": "Loss?", "zh": "Loss?"},
        "options": [
            {"id": "none", "text": {"en": "None", "zh": "None"}},
            {"id": "some", "text": {"en": "Some", "zh": "Some"}},
        ],
    }
    assert "score" not in str(views["risk"]) and "levels" not in views["risk"]
    assert views["fit"]["product"] == {
        "code": "P1",
        "name": {"en": "Product one", "zh": "Product one"},
        "risk_level": "R3",
    }
    assert views["risks"] == {
        "id": "risks",
        "kind": "disclosure",
        "title": {"en": "Disclosure", "zh": "信息披露"},
        "text": {"en": "Not a deposit.", "zh": "Not a deposit."},
        "document": doc_view,
    }
    # the signature shows the document of the document step it signs
    assert views["read"]["document"] == views["sign"]["document"] == doc_view
    assert set(views["order"]) == {"id", "kind", "title"}


# -- each step kind: what is missing -----------------------------------------------------------


def _step(cls, **kw):
    return cls(id="s", title=Text("S", "S"), line=1, **kw)


NOTHING = StepFacts()
CUSTOMER = StepFacts(customer_done=True)


def _said(text: Text | None) -> str | None:
    """What is missing, in English; it is said in Chinese too (the agent's page picks)."""
    if text is None:
        return None
    assert text.zh != text.en and any("\u4e00" <= ch <= "\u9fff" for ch in text.zh), text
    return text.en


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (_step(ConsentStep, consents=("recording",)), "the customer has not accepted yet"),
        (
            _step(QuestionnaireStep, questions=(), levels=LEVELS),
            "the customer has not answered the questionnaire",
        ),
        (
            _step(
                SuitabilityStep, questionnaire="q", product=Product("P", Text("P", "P"), "R1", 1)
            ),
            "the product is not suitable",
        ),
        (_step(DocumentStep, document="d"), "the customer has not read the document to its end"),
        (_step(SignatureStep, document="d"), "the customer has not signed"),
    ],
)
def test_missing_until_the_customer_has_done_their_part(step, message):
    assert _said(step.missing(NOTHING)) == message
    assert (
        _said(
            step.missing(StepFacts(agent_marked=True, face_verified=True, manually_verified=True))
        )
        == message
    )
    assert step.missing(CUSTOMER) is None


def test_an_outcome_misses_nothing():
    assert _step(OutcomeStep, outcome={"type": "account"}).missing(NOTHING) is None


@pytest.mark.parametrize(
    ("confirm_by", "facts", "message"),
    [
        (
            ("agent", "customer"),
            NOTHING,
            "mark the customer's spoken confirmation; the customer has not confirmed on screen",
        ),
        (
            ("agent", "customer"),
            StepFacts(agent_marked=True),
            "the customer has not confirmed on screen",
        ),
        (("agent", "customer"), CUSTOMER, "mark the customer's spoken confirmation"),
        (("agent", "customer"), StepFacts(agent_marked=True, customer_done=True), None),
        (("customer",), StepFacts(agent_marked=True), "the customer has not confirmed on screen"),
        (("customer",), CUSTOMER, None),
        (("agent",), CUSTOMER, "mark the customer's spoken confirmation"),
        (("agent",), StepFacts(agent_marked=True), None),
    ],
)
def test_disclosure_missing(confirm_by, facts, message):
    step = _step(DisclosureStep, text=Text("T", "T"), confirm_by=confirm_by)
    assert _said(step.missing(facts)) == message


FACE = "the customer's face is not verified"
OR_MANUAL = FACE + " (or verify manually with a reason)"
LIVENESS = "the liveness check has not passed"


@pytest.mark.parametrize(
    ("liveness", "allow_manual", "facts", "message"),
    [
        (False, True, NOTHING, OR_MANUAL),
        (False, False, NOTHING, FACE),
        (False, True, StepFacts(manually_verified=True), None),
        (False, False, StepFacts(manually_verified=True), FACE),  # manual verification not allowed
        (False, True, StepFacts(face_verified=True), None),
        (True, True, StepFacts(face_verified=True), LIVENESS),
        (True, True, StepFacts(liveness_passed=True), OR_MANUAL),  # liveness alone is not identity
        (True, False, StepFacts(face_verified=True, liveness_passed=True), None),
        (
            True,
            True,
            StepFacts(manually_verified=True),
            None,
        ),  # the agent's verification replaces both
        (True, False, StepFacts(manually_verified=True, face_verified=True), LIVENESS),
        (False, True, CUSTOMER, OR_MANUAL),  # nothing the customer taps verifies them
    ],
)
def test_identity_missing(liveness, allow_manual, facts, message):
    step = _step(IdentityStep, liveness=liveness, allow_manual=allow_manual)
    assert _said(step.missing(facts)) == message


# -- questionnaire answers and outcome booking -------------------------------------------------


def test_questionnaire_answers_are_scored_or_refused(tmp_path):
    step = load(tmp_path, WEALTH).step("risk")
    assert isinstance(step, QuestionnaireStep)
    assert (
        step.score({"q1": "none", "q2": "short"}) == 0
        and step.score({"q1": "some", "q2": "long"}) == 10
    )
    assert step.level(step.score({"q1": "some", "q2": "short"})).code == "C3"
    for answers, message in [
        ({"q1": "none"}, "answer every question once (missing ['q2'], unknown [])"),
        (
            {"q1": "none", "q2": "short", "q3": "x"},
            "answer every question once (missing [], unknown ['q3'])",
        ),
        ({"q1": "none", "q2": "forever"}, "'forever' is not an option of 'q2'"),
    ]:
        with pytest.raises(AnswerError) as info:
            step.score(answers)
        assert info.value.message == message
    assert Question("q", Text("q", "q"), ()).option("x") is None


class FakeCore:
    """The bank's core system cannot run here: this one records what it was asked to book."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    async def open_account(self, **kw):
        self.calls.append(("open_account", kw))
        return {"reference": "A1", "class": kw["account_class"]}

    async def sign_loan(self, **kw):
        self.calls.append(("sign_loan", kw))
        return {"reference": "L1", "terms": kw["terms"]}

    async def place_order(self, **kw):
        self.calls.append(("place_order", kw))
        return {"reference": "O1"}


async def test_outcomes_are_booked_with_the_core_system(tmp_path):
    core = FakeCore()
    who = {"session_id": "sess", "customer_name": "李四", "customer_risk_level": "C3"}
    account = load(tmp_path, BASE).steps[-1]
    assert await account.book(core, account_class="III", **who) == {
        "type": "account",
        "reference": "A1",
        "class": "III",
    }
    fixed = load(tmp_path, edit(BASE, "{type: account}", "{type: account, class: II}")).steps[-1]
    assert (await fixed.book(core, account_class="III", **who))[
        "class"
    ] == "II"  # the flow's class wins
    terms = "{amount: 1000, currency: CNY, term_months: 12, annual_rate: 4}"
    loan = load(tmp_path, _loan(f"{{type: loan, terms: {terms}}}")).steps[-1]
    booked = await loan.book(core, account_class="II", **who)
    assert booked == {
        "type": "loan",
        "reference": "L1",
        "terms": {"amount": 1000, "currency": "CNY", "term_months": 12, "annual_rate": 4},
    }
    order = load(tmp_path, WEALTH).steps[-1]
    assert await order.book(core, account_class="II", **who) == {"type": "order", "reference": "O1"}
    assert [name for name, _ in core.calls] == [
        "open_account",
        "open_account",
        "sign_loan",
        "place_order",
    ]
    assert core.calls[-1][1] == {
        "session_id": "sess",
        "customer_name": "李四",
        "amount": 1000,
        "customer_risk_level": "C3",
        "product": {"code": "P1", "name": "Product one", "risk_level": "R3"},
    }
