"""The HTML pages: the `--html` report (`report`, `plots`), the lesson (`explain`, `lesson`, `keras2_post`,
and its script, style and text beside them), and the headless browser the page tests open them in
(`browser`)."""
