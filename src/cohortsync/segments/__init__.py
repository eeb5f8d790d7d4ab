"""The segment language: AST, parser and plain-English explainer."""
