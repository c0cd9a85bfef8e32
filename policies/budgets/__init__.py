"""Output budgets (config ``budgets``): the max_tokens a request gets, by class (``layer``)."""
