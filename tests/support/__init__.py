"""Test helpers shared by all suites: real servers on loopback, never fakes of our own code."""
