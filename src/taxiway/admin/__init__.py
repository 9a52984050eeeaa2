"""taxiway.admin"""
