"""What operators read and act on: accounts and their breakers, a job's whole story, the
state of the deployment. The ``chorus`` commands print these; they hold no SQL of their own."""
