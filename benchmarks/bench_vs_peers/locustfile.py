"""Locust's fastest client (FastHttpUser, geventhttpclient) with no wait: its peak request rate."""

from locust import FastHttpUser, constant, task


class Hammer(FastHttpUser):
    wait_time = constant(0)

    @task
    def index(self) -> None:
        self.client.get("/")
