"""The control surface operators use: validate (test cohort), and the other checks."""
