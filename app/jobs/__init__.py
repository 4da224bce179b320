"""Jobs on RQ: how they are queued, shown, listed, cancelled and reported when they end."""
