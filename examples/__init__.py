"""qcc.examples"""
