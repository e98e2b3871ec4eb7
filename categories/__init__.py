"""categories"""
