"""SeMask meta-architectures and heads."""
