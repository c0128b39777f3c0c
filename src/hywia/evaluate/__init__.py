"""Stage: evaluate. Takes a (pruned) model; gives perplexity (``perplexity``), the paper's zero-shot tasks
through lm-eval (``zeroshot``, with the local task copies in ``offline_tasks``), speed and memory
(``speed``), results stored next to the model (``results``), side-by-side reports (``compare``) and
figures (``plots``)."""
