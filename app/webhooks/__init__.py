"""Webhooks: a job's status changes, signed and delivered to its tenant at least once.

``outbox`` writes delivery rows in the transaction that changes a job's status; ``delivery``
sends them from worker threads; ``signing`` holds the org secrets (Standard Webhooks);
``urls`` keeps callback URLs away from Chorus's own network.
"""
