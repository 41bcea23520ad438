async def test_models(client):
    page = await client.models.list()
    assert any(m.id == "openai/m0" for m in page.data)
