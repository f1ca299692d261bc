"""Membership-inference statistics behind ``unforget audit``: signals (torch) -> scores ->
metrics (numpy) -> verdict. (Named ``mia`` so that ``unforget.audit`` stays the API function.)"""
