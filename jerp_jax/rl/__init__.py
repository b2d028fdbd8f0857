"""The policy side of JERP: advantage estimators over turns and the token-level policy loss."""
