"""Forwarding: wastats in front of the customer's existing webhook consumer (docs/forwarding.md).

* `destinations`: the operator's destinations (validation, add / remove / pause, status, replay);
  domain services that take a Connection and never commit.
* `match`: which destinations a webhook body goes to, decided in the inbox insert's transaction.
* `worker`: the delivery worker, a thread that posts the stored bodies byte-exact and retries.
"""
