"""Token state: refresh families and revocations, behind one `TokenStore` protocol."""
