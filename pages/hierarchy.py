import streamlit as st
st.title("hierarchy")
