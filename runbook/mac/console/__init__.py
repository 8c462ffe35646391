"""Typing into a VM console (handbook lesson 4): the US key map and the typing backends."""
